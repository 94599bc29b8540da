"""`clipctl doctor`."""

from __future__ import annotations

import typer

from clipctl.console import emit_json, info, print_table
from clipctl.doctor import doctor_report


def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable report on stdout.")) -> None:
    """Versions, devices and precision support, data root and caches, hub reachability and which pretrained
    weights and tokenizers of the built-in recipes are cached.  Example: clipctl doctor"""
    report = doctor_report()
    if as_json:
        emit_json(report)
        return
    print_table("versions", ["package", "version"], report["versions"].items())
    devices = dict(report["devices"])
    cuda = devices.pop("cuda_devices")
    rows = [(k, v) for k, v in devices.items()] + [
        (f"cuda:{d['index']}", f"{d['name']} ({d['memory_gib']} GiB)") for d in cuda
    ]
    print_table("devices", ["item", "value"], rows)
    print_table("paths", ["what", "where"], report["paths"].items())
    hub = report["hub"]
    info(f"hub {hub['endpoint']}: " + ("reachable" if hub["reachable"] else hub["problem"]))
    print_table(
        f"pretrained files the built-in recipes read (hub cache {report['paths']['hf_cache']})",
        ["repo", "what", "cached", "recipes"],
        [(p["repo"], p["what"], "yes" if p["cached"] else "no", _names(p["recipes"])) for p in report["pretrained"]],
    )


def _names(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
