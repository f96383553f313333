"""`sophiavl infer`: one question or a batch file answered by a SophiaVL-R1-style model.

`inferencer` holds requests, results and the `Inferencer`; `backends` the hf / vllm backends over
`sophiavl_cli.generation`; `batch` the resumable JSONL batch mode.
"""
