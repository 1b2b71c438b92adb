#!/usr/bin/env python3
"""Writes golden-neox.json and golden-gpt2.json: the reference ids of every entry of inputs.json.

    python3 tests/data/tokenizer/make_golden.py [--out-dir DIR]

Needs the Python packages `tokenizers` (Hugging Face) and `tiktoken`, and no network: both tokenizers
are loaded from the copies in data_tools/tokenizers/.

Rules (shared with make_golden_gpt2.js, implemented by um::tok::Tokenizer):
  - NeoX ids:          Tokenizer.from_file(...).encode(text, add_special_tokens=False).ids
  - GPT-2 ids:         tiktoken encode(text, allowed_special="all")
  - GPT-2 ids_ordinary: tiktoken encode_ordinary(text)
  - {"base64": ...} entries are raw bytes: each well-formed UTF-8 stretch is encoded as above, and every
    byte outside them becomes its single-byte token; a byte the vocabulary has no token for (NeoX drops
    C0, C1, F5-FF, which never occur in UTF-8) becomes the ids of U+FFFD.
"""
import argparse
import base64
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
TOKENIZERS = os.path.join(ROOT, "data_tools", "tokenizers")
# tiktoken's "gpt2" (r50k) pattern, as in tiktoken_ext/openai_public.py.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def split_utf8(data):
    """Yields ("text", str) for well-formed UTF-8 stretches and ("byte", int) for every other byte."""
    # surrogateescape maps each byte of an ill-formed sequence to U+DC80+byte; well-formed UTF-8 never
    # decodes to a surrogate, so those code points mark exactly the stray bytes.
    text = data.decode("utf-8", errors="surrogateescape")
    run = []
    for ch in text:
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            if run:
                yield "text", "".join(run)
                run = []
            yield "byte", ord(ch) - 0xDC00
        else:
            run.append(ch)
    if run:
        yield "text", "".join(run)


def encode_entry(entry, encode_text, byte_ids, replacement_ids):
    if isinstance(entry, str):
        return encode_text(entry)
    ids = []
    for kind, value in split_utf8(base64.b64decode(entry["base64"])):
        if kind == "text":
            ids += encode_text(value)
        elif byte_ids.get(value) is not None:
            ids.append(byte_ids[value])
        else:
            ids += replacement_ids
    return ids


def neox_golden(inputs):
    import tokenizers

    path = os.path.join(TOKENIZERS, "gpt-neox-olmo-dolma-v1_5.json")
    tok = tokenizers.Tokenizer.from_file(path)
    encode = lambda text: tok.encode(text, add_special_tokens=False).ids
    byte_ids = {b: tok.token_to_id(c) for b, c in bytes_to_unicode().items()}
    replacement = encode("\ufffd")
    cases = [{"input": e, "ids": encode_entry(e, encode, byte_ids, replacement)} for e in inputs]
    return {"reference": f"tokenizers {tokenizers.__version__} Tokenizer.from_file",
            "tokenizer": "data_tools/tokenizers/gpt-neox-olmo-dolma-v1_5.json", "excluded": [], "cases": cases}


def gpt2_golden(inputs):
    import tiktoken

    with open(os.path.join(TOKENIZERS, "gpt2", "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    special = {"<|endoftext|>": encoder["<|endoftext|>"]}
    ranks = {bytes(byte_decoder[c] for c in token): rank for token, rank in encoder.items() if token not in special}
    enc = tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)
    byte_ids = {b: encoder[c] for b, c in bytes_to_unicode().items()}
    with_special = lambda text: enc.encode(text, allowed_special="all")
    cases = [{"input": e,
              "ids": encode_entry(e, with_special, byte_ids, []),
              "ids_ordinary": encode_entry(e, enc.encode_ordinary, byte_ids, [])} for e in inputs]
    return {"reference": f"tiktoken {tiktoken.__version__} (gpt2 ranks from encoder.json)",
            "tokenizer": "data_tools/tokenizers/gpt2", "excluded": [], "cases": cases}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=HERE)
    args = parser.parse_args()
    with open(os.path.join(HERE, "inputs.json"), encoding="utf-8") as f:
        inputs = json.load(f)
    for name, make in (("golden-neox.json", neox_golden), ("golden-gpt2.json", gpt2_golden)):
        golden = make(inputs)
        path = os.path.join(args.out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(golden, f, separators=(",", ":"))
            f.write("\n")
        print(f"{path}: {len(golden['cases'])} cases ({golden['reference']})")


if __name__ == "__main__":
    main()
