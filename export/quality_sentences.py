"""A fixed set of varied English texts for the export quality gate.

The int8 encoder is compared against the torch fp32 reference on these texts. They are kept
fixed so that the figures recorded in a bundle's manifest are comparable between exports. The
mix is deliberate: very short and very long texts, questions, numbers, punctuation, code-ish
strings, lists, names, casual and formal register, and a few texts longer than 128 tokens (the
last ones), which exercise positions beyond the length most inputs reach.
"""

from __future__ import annotations

QUALITY_SENTENCES: tuple[str, ...] = (
    "Hello!",
    "Thanks.",
    "ok",
    "The cat sat on the mat.",
    "A man is playing a guitar on the street corner.",
    "How do I reset my password if I no longer have access to my email?",
    "What is the capital of Australia?",
    "Why does the sky look blue during the day but red at sunset?",
    "The quarterly revenue grew by 12.5% to $4.3 billion, beating analyst estimates.",
    "Call me at 555-0142 after 6 p.m. on Tuesday, 14 March 2023.",
    "In 1969, Apollo 11 landed on the Moon with Neil Armstrong and Buzz Aldrin aboard.",
    "def add(a, b):\n    return a + b",
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name ORDER BY 2 DESC;",
    "git commit -m 'fix: handle empty input in parser' && git push origin main",
    "Error: ENOENT: no such file or directory, open '/var/log/app/config.yaml'",
    "The mitochondria is the powerhouse of the cell.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Quantum entanglement links particles so that measuring one constrains the other.",
    "I can't believe it's already Friday... where did the week go?!",
    "lol that was the best movie ever, 10/10 would watch again",
    "Please find attached the signed contract; let me know if anything is missing.",
    "The patient presented with acute chest pain radiating to the left arm.",
    "Preheat the oven to 180 degrees C and bake for 25 to 30 minutes.",
    "Stocks fell sharply after the central bank raised interest rates unexpectedly.",
    "She sells sea shells by the sea shore.",
    "To be, or not to be, that is the question.",
    "Refactor the authentication middleware to support OAuth 2.0 and PKCE.",
    "The river overflowed its banks after three days of heavy rain.",
    "Is it safe to eat raw cookie dough?",
    "Where can I find a good Italian restaurant near the train station?",
    "Machine learning models can overfit when the training set is small.",
    "The committee will reconvene next week to vote on the revised budget proposal.",
    "My laptop battery drains in two hours even when the screen is dimmed.",
    "Dogs are loyal companions and have lived alongside humans for thousands of years.",
    "The Eiffel Tower is 330 metres tall and was completed in 1889.",
    "Buy milk, eggs, bread, and two avocados.",
    "Version 2.4.1 fixes a memory leak in the HTTP/2 connection pool (see #4821).",
    "Could you summarise the main argument of this paper in two sentences?",
    "The referee blew the whistle and the crowd erupted in applause.",
    "Our flight was delayed by four hours because of a snowstorm in Chicago.",
    "Renewable energy sources include solar, wind, hydro, and geothermal power.",
    "He whispered, \"Don't tell anyone,\" and walked away.",
    "x = np.linalg.norm(v, axis=1, keepdims=True); v /= np.maximum(x, 1e-12)",
    "The novel explores themes of memory, loss, and the passage of time.",
    "Warning: the disk is 97% full; free up space to avoid data loss.",
    "Good morning, team -- today's stand-up is moved to 10:30.",
    "A red fox jumped over the sleeping dog.",
    "The museum's new exhibit features impressionist paintings from the 1870s.",
    "Which programming language should I learn first: Python, JavaScript or Go?",
    "The bridge was closed for repairs, so we took the ferry instead.",
    "Users report that the app crashes when uploading photos larger than 20 MB.",
    "Interest compounds monthly at an annual rate of 3.75%.",
    "I love hiking in the mountains during autumn when the leaves change colour.",
    "The defendant pleaded not guilty to all charges.",
    "https://example.com/docs/api/v1/users?id=42&sort=desc",
    "Why won't my code compile?? It says 'undefined reference to main' :(",
    (
        "The history of the printing press begins in the fifteenth century, when Johannes "
        "Gutenberg combined movable metal type, oil-based inks and a wooden press adapted from "
        "wine-making into a system that could produce books far faster than scribes. Within "
        "fifty years presses were operating in more than two hundred cities across Europe, and "
        "millions of volumes had been printed. The consequences were profound: literacy spread, "
        "scientific results could be shared and checked, religious and political pamphlets "
        "circulated widely, and vernacular languages gained standard spellings. Historians still "
        "debate how much the press caused these changes and how much it merely accelerated "
        "trends that were already under way in European society."
    ),
    (
        "Step 1: install the package with pip. Step 2: create a configuration file named "
        "settings.toml in your project directory, with a [server] section that sets host, port "
        "and the number of worker processes. Step 3: run the migration command to create the "
        "database tables; it prints each table as it is created and stops at the first error. "
        "Step 4: start the server in the foreground and open the dashboard in your browser at "
        "http://localhost:8080/ to check that every health indicator is green. Step 5: if any "
        "indicator is red, read the log file, fix the configuration, and restart the server "
        "before inviting other users to the instance."
    ),
    (
        "Dear hiring manager, I am writing to apply for the position of data engineer that was "
        "advertised on your website last week. Over the past six years I have designed and "
        "maintained batch and streaming pipelines that process several terabytes of events per "
        "day, mostly with Python, SQL, Kafka and Spark, and I have led the migration of a "
        "legacy warehouse to a columnar cloud store, which cut query costs by roughly forty "
        "percent. I enjoy working closely with analysts and product teams, writing clear "
        "documentation, and mentoring junior colleagues. I would welcome the chance to discuss "
        "how my experience could help your team, and I am available for an interview at your "
        "convenience."
    ),
    (
        "Abstract: We study the problem of personalising the outputs of large language models "
        "that are only available as black boxes through an API. Instead of fine-tuning the "
        "model itself, we train a small shared base model on many users and attach a "
        "lightweight head for each user, which reranks retrieved history items and adapts the "
        "generated text to the user's preferences. Experiments on five personalisation "
        "benchmarks covering classification and generation tasks show consistent improvements "
        "over retrieval-augmented prompting baselines, while the per-user parameters remain "
        "small enough to train and store on a phone. We release code and trained models to "
        "support further research on this topic."
    ),
)
