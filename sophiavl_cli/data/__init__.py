"""Training data: the dataset registry, loaders, the pre-flight check, the demo set, prompt presets.

Modules (import them directly; this package imports nothing heavy on its own):
- `registry`: the released `dataset_info.json` format, read and written atomically;
- `sources`: one split of one dataset read from json/jsonl/parquet/folder/hub/builtin:demo;
- `loader`: `load_rows(spec)` -> mapped rows, `PromptDataLoader` with exact resume;
- `images`: image references -> RGB PIL images;
- `check`: the pre-flight check behind `sophiavl dataset check`;
- `demo`: the `builtin:demo` set;
- `prompts`: the `sophiavl-r1` / `none` presets, user templates, the thinking-RM text.
"""
