"""``cns concepts list|show|history|rollback|delete|purge|export --tenant T`` and ``cns store verify|gc|tenants``."""

from __future__ import annotations

import argparse
import json

from cns_ray.cli import add_common


def register(sub) -> None:
    concepts = sub.add_parser("concepts", help="a tenant's concepts: list, show, history, rollback, delete, export")
    csub = concepts.add_subparsers(dest="concepts_command", required=True, metavar="VERB")

    def verb(name: str, help: str, func, *, version: bool = False, json_out: bool = False) -> argparse.ArgumentParser:
        p = csub.add_parser(name, help=help, description=help)
        add_common(p, base_model=False)
        p.add_argument("--tenant", required=True, help="tenant name")
        if version:
            p.add_argument("--version", type=int, default=None, help="tenant version (default: head)")
        if json_out:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func, exit_hard=True)
        return p

    verb("list", "concepts of a tenant at a version", _list, version=True, json_out=True)
    verb("show", "one concept in detail", _show, version=True, json_out=True).add_argument("name", help="concept name")
    verb("history", "every version of a tenant, oldest first; * marks the head", _history, json_out=True)
    verb("rollback", "move the tenant's head to an earlier (or later) version", _rollback).add_argument(
        "target", type=int, metavar="VERSION", help="version to make the head")
    verb("delete", "a new version without this concept (its token and its own delta entries removed)", _delete).add_argument(
        "name", help="concept name")
    p = verb("purge", "erase a concept: rebuild the state without it (replaying later concepts' learning from their "
             "stored inputs, as a Ray task), then remove every version that held it", _purge)
    p.add_argument("name", help="concept name")
    p.set_defaults(exit_hard=False)  # starts Ray: leave through Ray's own shutdown
    add_common(p, store=False)
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    verb("export", "copy one version (files + manifest excerpt) to a folder or s3://", _export, version=True).add_argument(
        "dest", help="destination folder or s3://bucket/prefix")

    store = sub.add_parser("store", help="the concept store: verify, gc, tenants")
    ssub = store.add_subparsers(dest="store_command", required=True, metavar="VERB")
    p = ssub.add_parser("verify", help="check every version of every tenant and the mask cache; exit 1 on problems",
                        description="check every version of every tenant and the mask cache; exit 1 on problems")
    add_common(p, base_model=False)
    p.add_argument("--base-model", default=None, help="also check every version against this base model (target "
                   "layers and shapes, base_id, text-encoder width), as serving it would; default: the store alone")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_verify, exit_hard=True)
    p = ssub.add_parser("gc", help="remove orphans, stale temp files and failed runs' checkpoints; old versions with --keep-last",
                        description="remove what no reader can reach (orphan version folders past their commit's lease, "
                        "temporary files and failed runs' checkpoints untouched for --grace-hours, legacy manifests), and "
                        "with --keep-last N every version but the N newest, the head and the head's parent")
    add_common(p, base_model=False)
    p.add_argument("--keep-last", type=int, default=None, metavar="N", help="keep the N newest versions per tenant (default: all)")
    p.add_argument("--grace-hours", type=float, default=6.0, help="age before temp files/checkpoints count as stale (default 6)")
    p.add_argument("--dry-run", action="store_true", help="report only; remove nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_gc, exit_hard=True)
    p = ssub.add_parser("tenants", help="list the store's tenants and their heads")
    add_common(p, base_model=False)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_tenants, exit_hard=True)


def _store(args):
    from cns_ray.config import StoreConfig
    from cns_ray.store import ConceptStore

    return ConceptStore(StoreConfig(uri=args.store))


def _concept_row(c) -> dict:
    return {"name": c.name, "token": c.token, "class_word": c.class_word, "method": c.method,
            "neurons": c.nnz, "version_added": c.version_added}


def _list(args) -> int:
    store = _store(args)
    if args.version is None and store.head(args.tenant) is None:  # a tenant with no versions has no concepts
        if args.json:
            print(json.dumps({"tenant": args.tenant, "version": None, "concepts": []}, indent=1))
        else:
            print(f"tenant {args.tenant}: no versions yet, 0 concept(s)")
        return 0
    state = store.load(args.tenant, args.version)
    rows = [_concept_row(c) for c in state.concepts]
    if args.json:
        print(json.dumps({"tenant": args.tenant, "version": state.version, "concepts": rows}, indent=1))
        return 0
    print(f"tenant {args.tenant}, version {state.version}: {len(rows)} concept(s), {state.delta.nnz} delta entries")
    if rows:
        print(f"  {'NAME':<20} {'TOKEN':<16} {'CLASS':<12} {'METHOD':<6} {'NEURONS':>9} {'ADDED':>5}")
    for r in rows:
        print(f"  {r['name']:<20} {r['token']:<16} {r['class_word']:<12} {r['method']:<6} {r['neurons']:>9} {str(r['version_added']):>5}")
    return 0


def _show(args) -> int:
    from cns_ray.errors import NotFoundError

    state = _store(args).load(args.tenant, args.version)
    c = state.concept(args.name)
    if c is None:
        raise NotFoundError(f"tenant {args.tenant!r} has no concept {args.name!r} at version {state.version} "
                            f"(concepts: {[x.name for x in state.concepts]})")
    emb = state.tokens.get(c.token)
    info = {**_concept_row(c), "version": state.version, "base_id": state.base_id, "stats": c.stats,
            "token_norm": None if emb is None else float(emb.norm()),
            "layers": {n: int(ix.numel()) for n, ix in sorted(c.neurons.items())}}
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"concept {c.name} of tenant {args.tenant} (version {state.version}, base {state.base_id})")
    for k in ("token", "class_word", "method", "neurons", "version_added", "token_norm"):
        print(f"  {k:<14} {info[k]}")
    print(f"  {'stats':<14} {json.dumps(c.stats, sort_keys=True)}")
    for n, k in info["layers"].items():
        print(f"    {n:<64} {k:>8}")
    return 0


def _history(args) -> int:
    from dataclasses import asdict

    hist = _store(args).history(args.tenant)
    if args.json:
        print(json.dumps({"tenant": args.tenant, "versions": [asdict(v) for v in hist]}, indent=1))
        return 0
    if not hist:
        print(f"tenant {args.tenant} has no versions")
        return 0
    print(f"  {'VER':>4} {'PARENT':>6} {'CREATED':<29} {'NNZ':>9}  CONCEPTS / MESSAGE")
    for v in hist:
        mark = "*" if v.is_head else " "
        print(f"{mark} {v.version:>4} {str(v.parent):>6} {v.created_at:<29} {v.nnz:>9}  {','.join(v.concepts) or '-'}"
              + (f"  ({v.message})" if v.message else ""))
    return 0


def _rollback(args) -> int:
    store = _store(args)
    before = store.head(args.tenant)
    store.rollback(args.tenant, args.target)
    print(f"tenant {args.tenant}: head {before} -> {args.target}")
    return 0


def _delete(args) -> int:
    v = _store(args).delete_concept(args.tenant, args.name)
    print(f"tenant {args.tenant}: deleted concept {args.name}; new head version {v}")
    return 0


def _purge(args) -> int:
    from cns_ray.jobs.purge import purge_concept
    from cns_ray.jobs.ray_env import init_ray

    init_ray(args.address)
    out = purge_concept(args.store, args.base_model, args.tenant, args.name)
    print(f"tenant {args.tenant}: purged concept {args.name}; new head version {out['version']} (replayed "
          f"{out['replayed'] or 'nothing'}); removed versions {out['removed']}")
    return 0


def _export(args) -> int:
    dest = _store(args).export(args.tenant, args.dest, args.version)
    print(f"exported tenant {args.tenant} to {dest}")
    return 0


def _verify(args) -> int:
    store = _store(args)
    against = {}
    if args.base_model:
        from cns_ray.models import load_base_model

        base = load_base_model(args.base_model)
        against = {"shapes": base.target_shapes(), "base_id": base.base_id,
                   "token_dim": int(base.text_encoder.get_input_embeddings().weight.shape[1])}
    problems, orphans = store.verify(**against), store.orphans()
    if args.json:
        print(json.dumps({"store": store.uri(), "problems": problems, "orphans": orphans}, indent=1))
    else:
        print(f"store {store.uri()}: {len(store.list_tenants())} tenant(s), {len(problems)} problem(s), "
              f"{len(orphans)} orphan version folder(s)")
        for p in problems:
            print(f"PROBLEM {p}")
        for o in orphans:
            print(f"orphan  {o}")
    return 1 if problems else 0


def _gc(args) -> int:
    from dataclasses import asdict

    from cns_ray.store.gc import GcPolicy

    rep = _store(args).gc(GcPolicy(keep_last=args.keep_last, grace_s=args.grace_hours * 3600, dry_run=args.dry_run))
    if args.json:
        print(json.dumps(asdict(rep), indent=1))
        return 0
    verb = "would remove" if rep.dry_run else "removed"
    n_versions = sum(len(v) for v in rep.removed_versions.values())
    print(f"gc {verb}: {n_versions} old version(s), {len(rep.orphans)} orphan folder(s), {len(rep.temp_files)} temp file(s), "
          f"{len(rep.checkpoints)} checkpoint folder(s), {len(rep.legacy_manifests)} legacy manifest(s)")
    for t, vs in rep.removed_versions.items():
        print(f"  tenant {t}: versions {vs}")
    for x in rep.orphans + rep.temp_files + rep.checkpoints + rep.legacy_manifests:
        print(f"  {x}")
    return 0


def _tenants(args) -> int:
    store = _store(args)
    rows = [{"tenant": t, "head": store.head(t)} for t in store.list_tenants()]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['tenant']:<64} head {r['head']}")
    return 0
