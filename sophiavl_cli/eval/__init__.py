"""`sophiavl eval`: benchmark loaders, default prompts, official scorers, the runner and the judge.

Layout: `benchmarks/<name>.py` (one per benchmark: normalise a record, default prompt, scorer),
`data.py` (Hugging Face and VLMEvalKit TSV layouts), `predictions.py` (prediction files),
`scoring.py` (rules, then the optional judge), `runner.py` (generation with a resumable cache),
`judge.py` (OpenAI-compatible judge client), `report.py` (JSON, CSV and the summary table).
"""
