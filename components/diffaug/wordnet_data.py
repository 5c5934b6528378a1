"""Make WordNet 3.0 available to NLTK offline: copy Debian's `wordnet-base` files into a project-local
NLTK data dir (`<dir>/corpora/wordnet/`, plain files, not group-writable, plus the `lexnames` index
that Debian does not ship), then memoise the noun hierarchy's depth that LCH needs (components/diffaug/wordnet.py).
Online machines may use `nltk.download('wordnet')` instead."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

DEBIAN_DIR = Path("/usr/share/wordnet")
DEFAULT_DIR = Path(__file__).resolve().parents[2] / ".nltk_data"
FILES = ("adj.exc", "adv.exc", "cntlist.rev", "data.adj", "data.adv", "data.noun", "data.verb",
         "index.adj", "index.adv", "index.noun", "index.sense", "index.verb", "noun.exc", "verb.exc")
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
]
_POS_CODE = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def lexnames_text() -> str:
    """WordNet 3.0 `lexnames` file: number, name, syntactic category per line."""
    return "".join(f"{i:02d}\t{n}\t{_POS_CODE[n.split('.')[0]]}\n" for i, n in enumerate(LEXNAMES))


def prepare(target: Path = DEFAULT_DIR, source: Path = DEBIAN_DIR) -> Path:
    """Copy WordNet files from `source` into `target/corpora/wordnet`; idempotent. Returns the data dir."""
    out = target / "corpora" / "wordnet"
    if all((out / n).is_file() for n in ("lexnames", "data.noun", "index.sense")):
        return target
    if not all((source / n).is_file() for n in ("data.noun", "index.sense")):
        raise FileNotFoundError(f"{source}: WordNet files not found (expected Debian packages wordnet-base and wordnet-sense-index: "
                                "apt-get install wordnet-base wordnet-sense-index)")
    tmp = out.with_name("wordnet.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in FILES:
        src = source / name
        if src.is_file():
            shutil.copyfile(src.resolve(), tmp / name)
    (tmp / "lexnames").write_text(lexnames_text())
    for p in tmp.iterdir():
        os.chmod(p, 0o644)
    os.chmod(tmp, 0o755)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return target


def ensure_nltk_path(target: Path = DEFAULT_DIR) -> None:
    """Put the project-local NLTK data dir on NLTK's search path."""
    import nltk

    if str(target) not in nltk.data.path:
        nltk.data.path.insert(0, str(target))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--source", type=Path, default=DEBIAN_DIR)
    args = ap.parse_args(argv)
    try:
        print(prepare(args.target, args.source))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ensure_nltk_path(args.target)
    from components.diffaug.wordnet import noun_max_depth

    print(f"WordNet noun max depth (LCH's D, memoised for later processes): {noun_max_depth()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
