"""The Hugging Face Hub side: short names (`names`), downloads (`download`) and registering a
downloaded dataset in `dataset_info.json` (`register`)."""
