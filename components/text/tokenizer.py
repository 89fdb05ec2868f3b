"""The tokenizer of one or both languages: what training data was encoded with and what serving
encodes a request with. It owns its folder's layout (``tokenizer.json``, ``vocab_<lang>.json``,
``userdict_zh.txt``): :meth:`Tokenizer.save` writes it, :func:`load_tokenizer` reads it, and
:meth:`Tokenizer.narrow` keeps one language (a trained model ships only its own).

A vocabulary's content is named by :func:`vocab_fingerprint` (sha256 of the ordered tokens); the
train step stores it in every checkpoint (``extra["vocab_fingerprint"]``) and
:func:`check_vocab_fingerprint` compares it wherever a checkpoint meets a vocabulary from
elsewhere (evaluate's data folder, predict's tokenizer, the registered model's).

Imports only :mod:`components.text.zh` (jieba) and the storage layer: serving loads this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from components.errors import InputError, MissingInputError
from components.logs import get_logger
from components.text import zh

LANGS = ("zh", "en")
PAD, UNK = "<pad>", "<unk>"
CONFIG_FILE = "tokenizer.json"
USERDICT_FILE = "userdict_zh.txt"
VERSION = 1  # tokenizer.json "version"
FINGERPRINT_KEY = "vocab_fingerprint"  # the checkpoint extra's key
_WARNED_UNFINGERPRINTED: set[str] = set()  # checkpoints already warned about, once each


def vocab_file(lang: str) -> str:
    return f"vocab_{lang}.json"


def vocab_fingerprint(vocab: Sequence[str]) -> str:
    """sha256 (hex) of the ordered vocabulary: equal fingerprints give every word the same id;
    two vocabularies of one size but other words (or another order) differ."""
    data = json.dumps(list(vocab), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def check_vocab_fingerprint(extra: dict, vocab: Sequence[str], checkpoint: str, source: str
                            ) -> None:
    """The vocabulary ``vocab`` (read from ``source``) is the one the checkpoint was trained on,
    by content: a mismatch is an InputError naming both fingerprints (first 12 hex characters).
    A checkpoint written before fingerprints were stored is let through with a warning, once per
    checkpoint in a process."""
    expected = str(extra.get(FINGERPRINT_KEY) or "")
    if not expected:
        if checkpoint not in _WARNED_UNFINGERPRINTED:
            _WARNED_UNFINGERPRINTED.add(checkpoint)
            get_logger("vocab").warning(
                "checkpoint %s stores no vocabulary fingerprint (written before they were "
                "stored): %s is assumed to be its vocabulary, unchecked", checkpoint, source)
        return
    got = vocab_fingerprint(vocab)
    if got != expected:
        raise InputError(f"checkpoint {checkpoint} was trained on vocabulary {expected[:12]} but "
                         f"{source} holds vocabulary {got[:12]} ({len(vocab)} tokens): other "
                         "words or ids; use the tokenize output (or tokenizer folder) the model "
                         "was trained with")


def detect_language(text: str | None) -> str:
    """``"zh"`` when the text has Chinese characters at least as many as Latin words, else ``"en"``."""
    t = text or ""
    n_han = zh.count_han(t)
    n_latin_words = len([w for w in zh.english_tokens(t) if zh.LATIN_RE.search(w)])
    return "zh" if n_han > 0 and n_han >= n_latin_words else "en"


def write_userdict(directory: str, sources: Sequence[str]) -> Path:
    """The jieba user dictionary in effect: the files ``sources`` (the project's first, then the
    user's) joined in order, written as the folder's ``userdict_zh.txt``. Returns its path."""
    parts = [Path(p).read_text(encoding="utf-8-sig").rstrip("\n") for p in sources]
    path = Path(directory, USERDICT_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


class Tokenizer:
    """Encodes one expression like the training data was encoded (see :func:`load_tokenizer`)."""

    def __init__(self, config: dict, vocabs: dict[str, list[str]], userdict: str | None):
        self.config = config
        self.vocabs = vocabs
        self.stoi = {lang: {w: i for i, w in enumerate(v)} for lang, v in vocabs.items()}
        self.max_len = {k: int(v) for k, v in config["max_len"].items()}
        self.userdict = userdict
        self.langs = tuple(vocabs)

    def tokens(self, text: str, lang: str) -> list[str]:
        if lang == "zh":
            extra = [self.userdict] if self.userdict else []
            return zh.segment(text, extra_userdicts=extra, project_dict=not self.userdict)
        if lang == "en":
            return zh.english_tokens(text)
        raise InputError(f"lang must be 'zh' or 'en', got {lang!r}")

    def encode(self, text: str, lang: str) -> tuple[list[int], int]:
        """(ids padded with 0 to the language's max length, number of real tokens)."""
        if lang not in self.stoi:
            raise InputError(f"this tokenizer has no {lang!r} vocabulary (it has {self.langs})")
        toks = self.tokens(text, lang)[: self.max_len[lang]]
        stoi = self.stoi[lang]
        ids = [stoi.get(t, 1) for t in toks]
        return ids + [0] * (self.max_len[lang] - len(ids)), len(ids)

    def decode(self, ids: Iterable[int], lang: str) -> list[str]:
        v = self.vocabs[lang]
        return [v[i] for i in ids if i != 0]

    @staticmethod
    def detect_language(text: str) -> str:
        return detect_language(text)

    # --------------------------------------------------------------------------------------------
    def narrow(self, lang: str) -> Tokenizer:
        """This tokenizer with only ``lang``: per-language sections of the config keep that
        language alone (what a trained model of that language ships)."""
        if lang not in self.vocabs:
            raise InputError(f"this tokenizer has no {lang!r} vocabulary (it has {self.langs})")
        cfg = dict(self.config)
        for key, value in list(cfg.items()):
            if isinstance(value, dict) and value and set(value) <= set(LANGS):
                cfg[key] = {lang: value[lang]} if lang in value else {}
        cfg["langs"] = [lang]
        return Tokenizer(cfg, {lang: self.vocabs[lang]}, self.userdict)

    def save(self, directory: str) -> Path:
        """Write ``tokenizer.json``, ``vocab_<lang>.json`` per language and the jieba user
        dictionary in effect (needed for Chinese) into a local ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if "zh" in self.langs and not self.userdict:
            raise MissingInputError(f"{directory}: a Chinese tokenizer needs the jieba user "
                                    f"dictionary in effect ({USERDICT_FILE}); none is known")
        for lang, vocab in self.vocabs.items():
            (out / vocab_file(lang)).write_text(json.dumps(vocab, ensure_ascii=False),
                                                encoding="utf-8")
        (out / CONFIG_FILE).write_text(json.dumps(self.config, indent=2, ensure_ascii=False,
                                                  sort_keys=True), encoding="utf-8")
        if self.userdict and Path(self.userdict).resolve() != (out / USERDICT_FILE).resolve():
            (out / USERDICT_FILE).write_bytes(Path(self.userdict).read_bytes())
        return out


@contextmanager
def _local_folder(directory: str) -> Iterator[str]:
    """A local copy of a tokenizer folder given as s3:// (the folder itself when local), removed
    when the block ends, whether the load succeeds or fails."""
    from components.data import storage

    if not storage.is_s3(directory):
        yield directory
        return
    local = tempfile.mkdtemp(prefix="refseg-tok-")
    try:
        for name in [CONFIG_FILE, USERDICT_FILE] + [vocab_file(g) for g in LANGS]:
            uri = storage.join(directory, name)
            if storage.exists(uri):
                Path(local, name).write_bytes(storage.read_bytes(uri))
        yield local
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _kept_userdict(path: Path) -> str:
    """A copy of the user dictionary ``path`` that outlives a temporary folder (jieba reads it
    when a text is segmented): one file per content in the temp directory, written once."""
    data = path.read_bytes()
    kept = Path(tempfile.gettempdir(), f"refseg-userdict-{hashlib.sha256(data).hexdigest()[:16]}.txt")
    if not kept.is_file() or kept.read_bytes() != data:
        fd, tmp = tempfile.mkstemp(dir=kept.parent, prefix=f".{kept.name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, kept)
    return str(kept)


def load_tokenizer(directory: str, lang: str | None = None) -> Tokenizer:
    """Load a tokenizer folder (a tokenize step's output or a model's ``tokenizer/``; local or
    s3://). With ``lang``, only that language is loaded, even when ``tokenizer.json`` lists both."""
    remote = str(directory).startswith("s3://")
    with _local_folder(str(directory)) as local:
        config, vocabs, ud = _read_folder(local, lang)
        userdict = (_kept_userdict(ud) if remote else str(ud)) if ud.is_file() else None
    tok = Tokenizer(config, vocabs, userdict)
    return tok.narrow(lang) if lang else tok


def _read_folder(directory: str, lang: str | None) -> tuple[dict, dict[str, list[str]], Path]:
    """(tokenizer.json, the vocabularies asked for, where the user dictionary would be)."""
    cfg_path = Path(directory, CONFIG_FILE)
    if not cfg_path.is_file():
        raise MissingInputError(f"{cfg_path}: no such file (not a tokenize output or tokenizer "
                                "folder?)")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    langs = list(config.get("langs", []))
    if lang is not None and lang not in langs:
        raise InputError(f"{cfg_path}: lists languages {langs}, not {lang!r}")
    vocabs = {}
    for g in [lang] if lang else langs:
        vocab = Path(directory, vocab_file(g))
        if not vocab.is_file():
            raise MissingInputError(f"{vocab}: no vocabulary for language {g!r} (was tokenize "
                                    "run with this language?)")
        vocabs[g] = json.loads(vocab.read_text(encoding="utf-8"))
    return config, vocabs, Path(directory, USERDICT_FILE)


def is_tokenizer_folder(directory: str) -> bool:
    return os.path.isfile(os.path.join(str(directory), CONFIG_FILE))
