"""The human-review queue from the command line.

  python -m experiments.review --db review.sqlite stats
  python -m experiments.review --db review.sqlite list [--limit 20] [--model moderation]
  python -m experiments.review --db review.sqlite resolve ID LABEL [--reviewer NAME] [--note TEXT]

LABEL is 0 (acceptable) or 1 (violates the policy). The server fills the queue
(``review_queue=FILE`` when serving a model that outputs ``decision``); resolved labels become
training rows of the next run (``python -m experiments.run +task=moderation
data.review_queue=FILE``). Errors a user can cause print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from mlsd_jax.serving.review import ReviewError, ReviewQueue


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.review",
                                     description="List and resolve items waiting for review.")
    parser.add_argument("--db", required=True, help="the review-queue SQLite file")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("stats", help="pending and resolved counts")
    ls = sub.add_parser("list", help="pending items, oldest first (one JSON object per line)")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--model", default=None)
    rs = sub.add_parser("resolve", help="label one pending item")
    rs.add_argument("id", type=int)
    rs.add_argument("label", type=int, help="0 = acceptable, 1 = violates the policy")
    rs.add_argument("--reviewer", default="")
    rs.add_argument("--note", default="")
    args = parser.parse_args(argv)
    try:
        with ReviewQueue(args.db) as q:
            if args.command == "stats":
                print(json.dumps(q.counts()))
            elif args.command == "list":
                for item in q.pending(args.limit, args.model):
                    print(json.dumps(item, ensure_ascii=False))
            else:
                print(json.dumps(q.resolve(args.id, args.label, args.reviewer, args.note),
                                 ensure_ascii=False))
    except ReviewError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
