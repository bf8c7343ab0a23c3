"""``hydrahead bundle``: get a model bundle onto the device, check it, and (publishers) sign it.

    hydrahead bundle pull https://example.org/bundles/v3 --key 5e1f...   # verify, install
    hydrahead bundle verify                                             # hashes + signature
    hydrahead bundle info --json
    hydrahead bundle keygen --out keys/     # publisher: a signing key, prints the public key
    hydrahead bundle sign DIR --key keys/bundle-signing.key
"""

from __future__ import annotations

import json
from typing import Any

import click

from hydrahead.cli_common import Context, Group, echo_err, pass_ctx

key_option = click.option(
    "--key", "keys", multiple=True,
    help="A trusted publisher public key (64 hex digits; repeatable). Default: "
         "$HYDRAHEAD_BUNDLE_KEYS.")


@click.group(cls=Group)
def bundle() -> None:
    """The model bundle: pull, verify, info; keygen and sign for publishers."""


@bundle.command("pull")
@click.argument("source")
@key_option
@click.option("--allow-unsigned", is_flag=True,
              help="Accept a bundle that is unsigned or signed by an unknown key.")
@click.option("--allow-downgrade", is_flag=True,
              help="Accept a bundle created before the one installed.")
@click.option("--deadline", type=click.FloatRange(min=1.0), default=1800.0, show_default=True,
              help="Seconds the whole pull may take.")
@pass_ctx
def bundle_pull(obj: Context, source: str, keys: tuple[str, ...], allow_unsigned: bool,
                allow_downgrade: bool, deadline: float) -> None:
    """Download (resumably), verify and install the bundle at SOURCE (URL, directory or
    archive); the bundle in use is replaced only once the new one is complete and verified."""
    from hydrahead.runtime.bundle_pull import pull_bundle

    pulled = pull_bundle(source, obj.bundle_dir, keys=keys or None,
                         allow_unsigned=allow_unsigned, allow_downgrade=allow_downgrade,
                         deadline=deadline, progress=echo_err)
    click.echo(f"bundle {pulled.fingerprint[:16]} installed at {obj.bundle_dir}")


@bundle.command("verify")
@key_option
@click.option("--allow-unsigned", is_flag=True, help="Do not fail on a missing signature.")
@pass_ctx
def bundle_verify(obj: Context, keys: tuple[str, ...], allow_unsigned: bool) -> None:
    """Check every file's sha256 and the manifest's signature."""
    from hydrahead.runtime.bundle import Bundle
    from hydrahead.runtime.bundle_signing import bundle_signature, require_trusted

    opened = Bundle.open(obj.bundle_dir, verify=True)
    status = bundle_signature(obj.bundle_dir, keys or None)
    require_trusted(status, allow_unsigned, str(obj.bundle_dir))
    signed = (f"signed by trusted key {status.key_id}" if status.trusted
              else f"NOT verified: {status.reason}")
    click.echo(f"ok: {len(opened.manifest['files'])} files match the manifest; {signed}")


@bundle.command("info")
@key_option
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@pass_ctx
def bundle_info(obj: Context, keys: tuple[str, ...], as_json: bool) -> None:
    """What the bundle holds: models, files, when and by which version it was made, signer."""
    from hydrahead.runtime.bundle import Bundle
    from hydrahead.runtime.bundle_signing import bundle_signature

    opened = Bundle.open(obj.bundle_dir, verify=False)
    status = bundle_signature(obj.bundle_dir, keys or None)
    m = opened.manifest
    info = {
        "path": str(obj.bundle_dir), "fingerprint": opened.fingerprint,
        "created": m.get("created"), "library_version": m.get("library_version"),
        "models": {name: spec.get("kind") for name, spec in m["models"].items()},
        "bytes": sum(e["bytes"] for e in m["files"].values()),
        "bases": {role: opened.base_training(role) for role in m["models"]
                  if role != "encoder"},
        "signature": {"signed": status.signed, "key_id": status.key_id,
                      "trusted": status.trusted, "reason": status.reason},
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"bundle {info['fingerprint'][:16]} at {info['path']}")
    click.echo(f"  created {info['created']} by hydrahead {info['library_version']}, "
               f"{info['bytes']:,} bytes")
    for name, kind in info["models"].items():
        click.echo(f"  model {name}: {kind}")
        if name in info["bases"]:
            click.echo(f"    {_describe_base(info['bases'][name])}")
    click.echo("  signature: " + (f"trusted key {status.key_id}" if status.trusted
                                  else status.reason))


def _describe_base(info: dict[str, Any]) -> str:
    if not info["trained"]:
        return "untrained (unfitted, the pipeline is plain dense RAG for this role)"
    return (f"trained on {info['users']} labelled user histories ({info['sources']} (task, LLM) "
            f"sources) of {', '.join(info['tasks'])}, with labels from "
            f"{', '.join(info['labels_from'])}{_describe_dev(info.get('dev'))}")


def _describe_dev(dev: Any) -> str:
    """The dev metrics of a base: per task, the fitted pipeline's worst and mean gain over the
    simulator family (bench/shipped_dev_summary.py's form), or the summary as JSON."""
    if not dev:
        return ""
    tasks = dev.get("tasks") if isinstance(dev, dict) else None
    if not isinstance(tasks, dict):
        return f"\n      dev metrics {json.dumps(dev)}"
    lines = [f"\n      dev ({dev.get('data')}, {dev.get('note', '')[:40]}...):"]
    for task, row in tasks.items():
        fitted = row.get("gain_vs_best_prompt_baseline", {}).get("fitted", {})
        lines.append(f"\n        {task} ({row.get('users')} users, {len(row.get('members', []))} "
                     f"LLMs, {row.get('metric')}): fitted vs best prompt baseline worst "
                     f"{fitted.get('worst', float('nan')):+.1%} ({fitted.get('worst_member')}), "
                     f"mean {fitted.get('mean', float('nan')):+.1%}")
    return "".join(lines)


@bundle.command("keygen")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for the private key (owner-only).")
def bundle_keygen(out: str) -> None:
    """Publisher: make an ed25519 signing key; prints the public key apps should trust."""
    from hydrahead.runtime.bundle_signing import generate_key_pair

    path, public = generate_key_pair(out)
    click.echo(f"private key: {path} (keep it secret)")
    click.echo(f"public key:  {public}")


@bundle.command("sign")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="The private key file from `hydrahead bundle keygen`.")
def bundle_sign(directory: str, key_file: str) -> None:
    """Publisher: sign the manifest of the bundle in DIRECTORY (writes manifest.sig)."""
    from hydrahead.runtime.bundle import Bundle
    from hydrahead.runtime.bundle_signing import sign_bundle

    Bundle.open(directory, verify=True)
    key = sign_bundle(directory, key_file)
    click.echo(f"signed {directory} with key {key}")
