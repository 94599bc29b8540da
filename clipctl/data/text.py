"""Caption cleaning and tokenisation.

One `TextTokenizer` type wraps a `tokenizers.Tokenizer` whatever its origin (WordPiece trained on the
training captions, or a Hugging Face tokenizer by name/path) and serialises to the tokenizers JSON, so a
run and its checkpoint carry the exact tokenizer and evaluation needs nothing else.
"""

from __future__ import annotations

import heapq
import os
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from clipctl.errors import UsageError

MAX_CAPTION_WORDS = 30
PAD_CANDIDATES = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>", "</s>")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def clean_caption(
    text: str, max_words: int = MAX_CAPTION_WORDS, *, lowercase: bool = True, strip_punctuation: bool = True
) -> str:
    """Lower-case, punctuation and symbols replaced by spaces, whitespace collapsed, at most `max_words` words.

    Matches the report's pipeline so vocabularies and captions compare across runs; may return "". A model's
    preprocessing record may keep the case or the punctuation (`clipctl.model.preprocess.text_cleaner`).
    """
    text = unicodedata.normalize("NFKC", str(text))
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = text.replace("'", "").replace("\u2019", "")
    dropped = "PSCZ" if strip_punctuation else "CZ"
    kept = "".join(" " if unicodedata.category(ch)[0] in dropped else ch for ch in text)
    return " ".join(kept.split()[:max_words])


class TextTokenizer:
    """Encode caption batches to fixed-length id tensors padded with `pad_id` (mask = ids != pad_id)."""

    def __init__(self, tokenizer: Any, max_len: int, source: str = "") -> None:
        if max_len < 2:
            raise UsageError(f"data.max_text_len = {max_len}: must be at least 2")
        self._tok = tokenizer
        self.max_len = int(max_len)
        self.source = source
        self.pad_id = _find_pad_id(tokenizer)
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_len)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, max_len) int64 ids; truncated to max_len (special tokens included), right-padded with pad_id."""
        out = torch.full((len(texts), self.max_len), self.pad_id, dtype=torch.long)
        if not texts:
            return out
        for row, enc in enumerate(self._tok.encode_batch([str(t) for t in texts])):
            ids = enc.ids[: self.max_len]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids if int(i) != self.pad_id])

    def to_json(self) -> str:
        return self._tok.to_str()

    @classmethod
    def from_json(cls, text: str, max_len: int) -> TextTokenizer:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
            raise UsageError(
                f"tokenizer JSON is invalid ({str(err).splitlines()[0]}); re-create the run's tokenizer"
            ) from None
        return cls(tokenizer, max_len, source="json")


def trim_padding(token_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop the trailing columns that are padding in every row (keeping at least one).

    Padded keys are masked, so the text tower's output does not change, only its cost. Call it on the host
    tensor before moving a batch to an accelerator: there the length would cost a device-to-host sync per batch.
    """
    used = (token_ids != pad_id).any(0).nonzero()
    length = int(used[-1]) + 1 if len(used) else 1
    return token_ids[:, :length]


def _find_pad_id(tokenizer: Any) -> int:
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None and padding.get("pad_token"):
        return int(padding["pad_id"])
    for token in PAD_CANDIDATES:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    raise UsageError(
        "tokenizer has no padding token ([PAD], <pad>, </s>); choose a tokenizer with one or model.tokenizer "
        '= "wordpiece"'
    )


def learn_wordpiece_vocab(word_counts: dict[str, int], vocab_size: int) -> list[str]:
    """WordPiece vocabulary by greedy pair merges (the BPE-style procedure of `tokenizers`' WordPieceTrainer),
    with ties broken by the pair's text, so the same captions always give the same vocabulary.

    Why not WordPieceTrainer itself: it breaks count ties in hash-map order, which differs between calls
    (measured: 4 trainings, 4 different vocabularies), and runs must be reproducible.
    """
    words = sorted(w for w in word_counts if 0 < len(w) <= 100)
    seqs = [[w[0]] + ["##" + c for c in w[1:]] for w in words]
    counts = [word_counts[w] for w in words]
    vocab = list(SPECIALS) + sorted({t for seq in seqs for t in seq})
    known = set(vocab)
    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    holders: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pair_counts[pair] += counts[i]
            holders[pair].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:
            continue  # stale heap entry
        if -neg < 2:
            break  # merging pairs seen once only memorises noise
        merged = pair[0] + pair[1][2:]
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        changed = set()
        for i in sorted(holders.pop(pair, ())):
            seq, n = seqs[i], counts[i]
            for old in zip(seq, seq[1:]):
                pair_counts[old] -= n
                changed.add(old)
            out, k = [], 0
            while k < len(seq):
                if k + 1 < len(seq) and (seq[k], seq[k + 1]) == pair:
                    out.append(merged)
                    k += 2
                else:
                    out.append(seq[k])
                    k += 1
            seqs[i] = out
            for new in zip(out, out[1:]):
                pair_counts[new] += n
                holders[new].add(i)
                changed.add(new)
        pair_counts.pop(pair, None)
        for p in sorted(changed):
            if pair_counts.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    return vocab[:vocab_size]


def train_wordpiece(captions: Iterable[str], vocab_size: int, max_len: int) -> TextTokenizer:
    """A BERT-style uncased WordPiece tokenizer (tokenizers' normaliser, pre-tokeniser, model and JSON)
    whose vocabulary is learned deterministically from `captions`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for caption in captions:
        word_counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(caption)))
    vocab = learn_wordpiece_vocab(word_counts, vocab_size)
    tokenizer = Tokenizer(
        models.WordPiece({tok: i for i, tok in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100)
    )
    tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    tokenizer.add_special_tokens(list(SPECIALS))  # already in the vocabulary: marks them special (skipped by decode)
    cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.enable_padding(pad_id=vocab.index("[PAD]"), pad_token="[PAD]")
    return TextTokenizer(tokenizer, max_len, source="wordpiece")


def load_hf_tokenizer(name_or_path: str, max_len: int) -> TextTokenizer:
    """A fast Hugging Face tokenizer by hub name, local folder or tokenizer.json; offline and uncached -> UsageError."""
    from tokenizers import Tokenizer

    path = Path(name_or_path)
    if path.is_file():
        return TextTokenizer.from_json(path.read_text(encoding="utf-8"), max_len)
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return TextTokenizer(Tokenizer.from_file(str(path / "tokenizer.json")), max_len, source=str(path))
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
            "TRANSFORMERS_OFFLINE", ""
        ) not in ("", "0")
        why = (
            "the hub is offline (HF_HUB_OFFLINE=1) and it is not in the local cache"
            if offline
            else f"it could not be loaded ({str(err).splitlines()[0]})"
        )
        raise UsageError(
            f"tokenizer {name_or_path!r}: {why}; download it once with network access (unset HF_HUB_OFFLINE) "
            "or give a local "
            f'folder/tokenizer.json path, or set model.tokenizer = "wordpiece" to train one on the captions'
        ) from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise UsageError(
            f'tokenizer {name_or_path!r} has no fast (tokenizers) version; use model.tokenizer = "wordpiece"'
        )
    return TextTokenizer(Tokenizer.from_str(backend.to_str()), max_len, source=name_or_path)


def build_tokenizer(model_cfg: Any, max_len: int, captions: Iterable[str]) -> TextTokenizer:
    """The recipe's tokenizer: "wordpiece" (trained on `captions`), "auto" (the text model's) or a name/path."""
    choice = model_cfg.tokenizer
    if choice == "wordpiece":
        return train_wordpiece(captions, model_cfg.vocab_size, max_len)
    return load_hf_tokenizer(model_cfg.text_model if choice == "auto" else choice, max_len)
