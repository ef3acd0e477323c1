"""Data layer: public-domain corpora, a lossless sentencepiece tokenizer, a memory-mapped token
store split by document, Grain pipelines and passkey (NIAH) samples. Import submodules directly."""
