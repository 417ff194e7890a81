#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/hf/tokenizer.json: the Llama 2 tokenizer.model as a Hugging
Face `tokenizer.json` of the shape meta-llama/Llama-2-*-hf ships (model BPE with
byte_fallback, normalizer Prepend("▁") + Replace(" ", "▁"), ByteFallback decoder).

transformers 5's LlamaTokenizerFast conversion no longer reproduces tokenizer.model (it
orders merges differently: 57 of our 316 encode fixtures come out different), so this
script builds the file with the `tokenizers` library the way transformers 4's
LlamaConverter / SentencePieceExtractor did: every split of every piece into two pieces is
a merge, ordered by the merged piece's score (descending, stable), within a piece by the
ids of its halves. It then checks that `tokenizers` encodes every encode fixture exactly as
sentencepiece does.

Usage (throwaway venv: `python3 -m venv /tmp/tok-venv &&
/tmp/tok-venv/bin/pip install tokenizers sentencepiece`):
    /tmp/tok-venv/bin/python scripts/make-hf-tokenizer-json.py \
        tests/fixtures/tokenizer/tokenizer.model tests/fixtures/tokenizer/hf
"""
import json
import sys
from pathlib import Path

import sentencepiece as spm
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE


def main() -> None:
    model, out_dir = sys.argv[1], Path(sys.argv[2])
    sp = spm.SentencePieceProcessor(model_file=model)
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(n)}
    merges = []
    for piece, score in scores.items():
        local = []
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: x[2], reverse=True)
    merges = [(a, b) for a, b, _ in merges]

    tok = Tokenizer(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.add_special_tokens([
        AddedToken(sp.id_to_piece(i), normalized=False, special=True) for i in (0, 1, 2)
    ])
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )

    fixtures = Path(model).parent
    cases = json.loads((fixtures / "encode_cases.json").read_text())
    cases += json.loads((fixtures / "llama_cpp_vectors.json").read_text())
    # Check as plain text (Meta's encode): special-token texts are not split out here.
    tok.encode_special_tokens = True
    bad = [c["text"] for c in cases if tok.encode(c["text"], add_special_tokens=False).ids != c["ids"]]
    if bad:
        sys.exit(f"{len(bad)} of {len(cases)} fixtures differ, e.g. {bad[:3]!r}")
    tok.encode_special_tokens = False
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"), pretty=False)
    print(f"wrote {out_dir / 'tokenizer.json'}: {n} pieces, {len(merges)} merges; all {len(cases)} fixtures match")


if __name__ == "__main__":
    main()
