"""Tokenizers: a HF ``tokenizers.Tokenizer`` from a tokenizer.json or from a GGUF's own vocabulary.

Where the tokenizer comes from (first hit wins):
  1. an explicit ``tokenizer_path`` (if it does not exist that is an error: the user asked for it),
  2. ``tokenizer.json`` next to the model file,
  3. the GGUF's ``tokenizer.ggml.*`` metadata (byte-level BPE: tokens + merges).
When nothing is found the error lists every place searched.

``encode`` returns the ids of the text only; it never adds BOS. ``add_bos`` tells the caller
(``Model.encode_prompt``) to put ``bos_id`` in front, as llama.cpp does when the file asks for it.
"""
from __future__ import annotations

import json
import operator
from pathlib import Path

import numpy as np
from gguf.constants import Keys, TokenType
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .errors import TokenizerError

TOKENIZER_JSON = "tokenizer.json"

# tokenizer.ggml.model values we can build (llama.cpp's name for byte-level BPE is "gpt2").
SUPPORTED_GGUF_MODELS = ("gpt2",)

# tokenizer.ggml.pre -> how text is split before BPE. The regexes are the ones llama.cpp's
# llama-vocab.cpp uses for these pre-tokenizer types:
#   "gpt-2": only the GPT-2 split  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
#            which is exactly what HF's ByteLevel(use_regex=True) applies (and tiktoken's r50k pattern).
#   "smollm": first every \p{N} character on its own, then the GPT-2 split. HF expresses the same
#            thing as Digits(individual_digits=True) followed by ByteLevel (SmolLM2's tokenizer.json;
#            Rust's char::is_numeric is the Unicode N category, like llama.cpp's \p{N}).
#   "gpt-4o": OpenAI's o200k split (gpt-4o, gpt-oss), the pattern tiktoken uses for o200k_base
#            (tiktoken_ext/openai_public.py), applied as HF's gpt-oss tokenizer.json does: a Split
#            with that regex, then ByteLevel without its own regex. llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT4O
#            spells the letter-case classes with lookaheads ((?=[\p{L}])[^a-z]) because std::regex
#            lacks \p{Lu}; we keep tiktoken's classes, which is what the vocabulary was trained with.
# llama.cpp's "default" type uses a different, looser set of regexes; it is not supported here.

O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])


def _gpt2_split():
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm_split():
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2_split()])


def _o200k_split():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


PRE_TOKENIZERS = {"gpt-2": _gpt2_split, "smollm": _smollm_split, "gpt-4o": _o200k_split}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character alphabet (OpenAI's encoder.py scheme).

    Bytes that are printable Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the
    other 68 bytes, in increasing order, get the characters U+0100, U+0101, ... so that no token
    string contains whitespace or control characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# character (code point) -> the character whose code point is the byte, for str.translate.
# Characters below 256 that are NOT in the alphabet map to U+0100, which makes the latin-1
# encode fail, so such a token takes the slow path below.
_UNICODE_TO_BYTE = {c: "\u0100" for c in range(256)}
_UNICODE_TO_BYTE.update({ord(ch): chr(b) for b, ch in bytes_to_unicode().items()})


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


class Tokenizer:
    """A HF ``tokenizers.Tokenizer`` plus the ids the engine needs.

    ``vocab_size`` is the number of ids the tokenizer knows (0..vocab_size-1).
    """

    def __init__(self, hf: HFTokenizer, *, source: str, vocab_size: int,
                 bos_id: int | None, eos_id: int | None, add_bos: bool, context_length: int | None):
        self.hf = hf
        self.source = source  # where it came from: a tokenizer.json path or "<model> (GGUF metadata)"
        self.vocab_size = vocab_size
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos
        self.context_length = context_length
        self._special = {i: t.content for i, t in hf.get_added_tokens_decoder().items()}
        self._bytes_cache: dict[int, bytes] = {}

    def __repr__(self) -> str:
        return (f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, add_bos={self.add_bos}, context_length={self.context_length})")

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (special-token strings like ``<|endoftext|>`` become their single id).
        No BOS is added; see ``add_bos``."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode needs a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate (os.fsdecode of bad bytes): the tokenizers
            # library would say "TextInputSequence must be str" of what is a str
            raise TokenizerError(f"the text is not valid Unicode: a lone surrogate U+{ord(text[e.start]):04X} at "
                                 f"offset {e.start}") from None
        return self.hf.encode(text, add_special_tokens=False).ids

    def _check_id(self, token_id) -> int:
        try:
            i = operator.index(token_id)  # int, numpy/torch integers; never floats or str
        except TypeError:
            raise TokenizerError(f"token id {token_id!r} is not an integer") from None
        if isinstance(token_id, bool) or not 0 <= i < self.vocab_size:
            raise TokenizerError(f"token id {token_id!r} out of range [0, {self.vocab_size})")
        return i

    def decode(self, ids) -> str:
        """Text of ``ids``; byte sequences that are not valid UTF-8 become U+FFFD."""
        checked = [self._check_id(i) for i in ids]
        return self.hf.decode(checked, skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (a special token: its text in UTF-8)."""
        i = self._check_id(token_id)
        cached = self._bytes_cache.get(i)
        if cached is not None:
            return cached
        if i in self._special:
            raw = self._special[i].encode("utf-8")
        else:
            piece = self.hf.id_to_token(i)
            if piece is None:
                raise TokenizerError(f"{self.source}: token id {i} has no token")
            try:
                raw = piece.translate(_UNICODE_TO_BYTE).encode("latin-1")
            except UnicodeEncodeError:
                # Some character is outside GPT-2's byte alphabet: like the ByteLevel decoder
                # (tokenizers, decoders/byte_level.rs), the whole token then stands for its UTF-8.
                raw = piece.encode("utf-8")
        self._bytes_cache[i] = raw
        return raw


# --------------------------------------------------------------------------- building

def _from_gguf_metadata(metadata: dict, source: str) -> HFTokenizer:
    """Byte-level BPE from ``tokenizer.ggml.{model,pre,tokens,merges,token_type}``."""
    model = metadata.get(Keys.Tokenizer.MODEL)
    if model not in SUPPORTED_GGUF_MODELS:
        raise TokenizerError(f"{source}: {Keys.Tokenizer.MODEL} is {model!r}; supported: "
                             f"{', '.join(SUPPORTED_GGUF_MODELS)}")
    pre = metadata.get(Keys.Tokenizer.PRE)
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(f"{source}: {Keys.Tokenizer.PRE} is {pre!r}; supported: {', '.join(PRE_TOKENIZERS)}")
    tokens = metadata.get(Keys.Tokenizer.LIST)
    if not isinstance(tokens, list) or not tokens or not all(type(t) is str for t in tokens):
        raise TokenizerError(f"{source}: {Keys.Tokenizer.LIST} must be a non-empty array of strings")
    merges = metadata.get(Keys.Tokenizer.MERGES)
    if not isinstance(merges, list) or not all(type(m) is str for m in merges):
        raise TokenizerError(f"{source}: {Keys.Tokenizer.MERGES} must be an array of strings")

    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        seen: set[str] = set()
        dup = next(i for i, t in enumerate(tokens) if t in seen or seen.add(t))
        raise TokenizerError(f"{source}: {Keys.Tokenizer.LIST} has a duplicate token {tokens[dup]!r} at id {dup}")
    types = metadata.get(Keys.Tokenizer.TOKEN_TYPE)
    if types is not None and len(types) != len(tokens):
        raise TokenizerError(f"{source}: {Keys.Tokenizer.TOKEN_TYPE} has {len(types)} entries for "
                             f"{len(tokens)} tokens")

    # A merge is "left right" (byte-level tokens never contain a space: 0x20 is spelled 'Ġ').
    # The tokenizers library checks that both halves and their concatenation are tokens; only
    # when it refuses do we look for the culprit, to keep the common path fast (~50k merges).
    try:
        bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], fuse_unk=False)
    except Exception:  # TypeError for a malformed pair, plain Exception for an unknown token
        raise TokenizerError(f"{source}: {_bad_merge(merges, vocab)}") from None
    hf = HFTokenizer(bpe)
    hf.pre_tokenizer = PRE_TOKENIZERS[pre]()
    hf.decoder = decoders.ByteLevel()
    if types is not None:
        # CONTROL tokens (<|endoftext|>, <|im_start|>) and USER_DEFINED ones are matched whole in
        # the text, as llama.cpp does, so they encode as one id instead of being cut into pieces.
        kinds = np.asarray(types)
        control = np.flatnonzero(kinds == int(TokenType.CONTROL)).tolist()
        user = np.flatnonzero(kinds == int(TokenType.USER_DEFINED)).tolist()
        if control:
            hf.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in control])
        if user:
            hf.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in user])
    return hf


def _bad_merge(merges: list[str], vocab: dict[str, int]) -> str:
    for k, m in enumerate(merges):
        parts = m.split(" ")
        if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab or parts[0] + parts[1] not in vocab:
            return (f"{Keys.Tokenizer.MERGES}[{k}] = {m!r} is not two tokens separated by one space "
                    f"whose concatenation is a token")
    return f"{Keys.Tokenizer.MERGES} was refused by the tokenizers library"


def _is_byte_level(spec: dict) -> bool:
    dec = spec.get("decoder") or {}
    parts = dec.get("decoders", []) if dec.get("type") == "Sequence" else [dec]
    return any(isinstance(p, dict) and p.get("type") == "ByteLevel" for p in parts)


def _from_json(path: Path) -> tuple[HFTokenizer, int]:
    try:
        text = path.read_text(encoding="utf-8")
        spec = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: cannot read tokenizer.json: {_one_line(e)}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise TokenizerError(f"{path}: not a tokenizer.json (no 'model' object)")
    try:
        hf = HFTokenizer.from_str(text)
    except Exception as e:  # the Rust side raises a plain Exception with serde's message
        raise TokenizerError(f"{path}: not a valid tokenizer.json: {_one_line(e)}") from None
    if not _is_byte_level(spec):
        # token_bytes needs to know how a token maps to bytes; only byte-level BPE is done so far.
        raise TokenizerError(f"{path}: only byte-level BPE tokenizers (ByteLevel decoder) are supported")
    n = hf.get_vocab_size(with_added_tokens=True)
    top = max(hf.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    if top != n:
        raise TokenizerError(f"{path}: token ids are not contiguous ({n} tokens, highest id {top - 1})")
    return hf, n


def _special_id(metadata: dict, key: str, hf: HFTokenizer, n: int, source: str, from_json: bool) -> int | None:
    """bos/eos from the GGUF. With a separate tokenizer.json the GGUF's id names a token of the
    GGUF's own list; the same token (by text) is looked up in the tokenizer.json, whose ids may differ."""
    v = metadata.get(key)
    if v is None:
        return None
    tokens = metadata.get(Keys.Tokenizer.LIST)
    limit = len(tokens) if from_json and isinstance(tokens, list) else n
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < limit:
        raise TokenizerError(f"{source}: {key} = {v!r} is not a token id in [0, {limit})")
    if not (from_json and isinstance(tokens, list)):
        return int(v)
    found = hf.token_to_id(tokens[v])
    if found is None:
        raise TokenizerError(f"{source}: has no token {tokens[v]!r}, which the model's {key} ({v}) names")
    return found


def load_tokenizer(model_path, metadata: dict, tokenizer_path=None, embedding_rows: int | None = None,
                   context_length: int | None = None) -> Tokenizer:
    """The model's tokenizer; see the module docstring for the search order.

    ``embedding_rows``: rows of ``token_embd``. A GGUF's own vocabulary must match it exactly
    (llama.cpp requires n_vocab == rows, and its converter pads the token list to the rows). A
    separate tokenizer.json may have FEWER tokens (HF checkpoints often pad the embedding to a
    multiple of 64/128, e.g. phi-2: 50295 tokens, 51200 rows); those extra rows are unreachable by
    encode and decode refuses their ids. More tokens than rows is always an error: those ids
    would index past the embedding.
    """
    metadata = metadata or {}
    searched: list[str] = []
    json_path: Path | None = None
    if tokenizer_path is not None:
        p = Path(tokenizer_path)
        searched.append(str(p))
        if not p.is_file():
            raise TokenizerError(f"tokenizer file not found: {p} (searched: {', '.join(searched)})")
        json_path = p
    elif model_path is not None:
        p = Path(model_path).parent / TOKENIZER_JSON
        searched.append(str(p))
        if p.is_file():
            json_path = p

    if json_path is not None:
        hf, n = _from_json(json_path)
        source, exact = str(json_path), False
    else:
        source = f"{model_path} (GGUF metadata)" if model_path is not None else "GGUF metadata"
        if Keys.Tokenizer.MODEL not in metadata:
            searched.append(f"{model_path}: {Keys.Tokenizer.MODEL}")
            raise TokenizerError(f"no tokenizer found (searched: {', '.join(searched)})")
        hf = _from_gguf_metadata(metadata, source)
        n = len(metadata[Keys.Tokenizer.LIST])
        exact = True

    if embedding_rows is not None:
        if n > embedding_rows or (exact and n != embedding_rows):
            raise TokenizerError(f"{source}: tokenizer has {n} tokens but the model's embedding has "
                                 f"{embedding_rows} rows")

    add_bos = metadata.get(Keys.Tokenizer.ADD_BOS, False)
    if not isinstance(add_bos, bool):
        raise TokenizerError(f"{source}: {Keys.Tokenizer.ADD_BOS} = {add_bos!r} is not a bool")
    if context_length is None:
        arch = metadata.get(Keys.General.ARCHITECTURE)
        ctx = metadata.get(Keys.LLM.CONTEXT_LENGTH.format(arch=arch)) if isinstance(arch, str) else None
        context_length = int(ctx) if isinstance(ctx, int) and not isinstance(ctx, bool) else None
    return Tokenizer(hf, source=source, vocab_size=n,
                     bos_id=_special_id(metadata, Keys.Tokenizer.BOS_ID, hf, n, source, not exact),
                     eos_id=_special_id(metadata, Keys.Tokenizer.EOS_ID, hf, n, source, not exact),
                     add_bos=add_bos, context_length=context_length)
