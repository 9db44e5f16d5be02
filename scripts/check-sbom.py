#!/usr/bin/env python3
"""Checks the SBOMs scripts/sbom.sh wrote into OUT_DIR against the workspace (make test-sbom):

* each describes the crate it is named after, for its target, in CycloneDX JSON, without the random serial number
  and without the checkout's path;
* the module's lists proxy-wasm and egress-identity-core, the CLI's clap and egress-identity-core, each at its
  Cargo.lock version (and, for a crates.io crate, with Cargo.lock's checksum as its SHA-256); the module's does not
  list clap, the CLI's not proxy-wasm;
* each lists every crate `cargo tree` says the package's build uses for that target (normal and build
  dependencies); what it lists besides, cargo metadata's workspace-wide feature resolution, is printed.

    .venv/bin/python scripts/check-sbom.py OUT_DIR
"""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WASM_TARGET = "wasm32-wasip1"
TARGET_PROPERTY = "cdx:rustc:sbom:target:triple"
CARGO = os.environ.get("CARGO", "cargo")

passed: list[str] = []
failed: list[str] = []


def check(ok: bool, what: str) -> None:
    (passed if ok else failed).append(what)
    if not ok:
        print(f"check-sbom: FAIL: {what}", file=sys.stderr)


def lock_packages() -> dict[str, list[dict]]:
    packages: dict[str, list[dict]] = {}
    for package in tomllib.loads((ROOT / "Cargo.lock").read_text())["package"]:
        packages.setdefault(package["name"], []).append(package)
    return packages


def built_crates(package: str, target: str) -> set[tuple[str, str]]:
    """(name, version) of every crate the build of `package` for `target` compiles, by cargo's own resolver."""
    out = subprocess.run(
        [CARGO, "tree", "--quiet", "--locked", "-p", package, "--target", target, "-e", "normal,build",
         "--prefix", "none", "--format", "{p}"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    crates = set()
    for line in out.splitlines():
        name, version = line.split()[:2]
        crates.add((name, version.removeprefix("v")))
    return crates


def check_sbom(path: Path, package: str, target: str, wanted: list[str], absent: list[str],
               lock: dict[str, list[dict]]) -> None:
    name = path.name
    check(path.is_file(), f"{name} exists")
    if not path.is_file():
        return
    text = path.read_text()
    bom = json.loads(text)
    check(bom.get("bomFormat") == "CycloneDX" and bom.get("specVersion") == "1.5", f"{name}: CycloneDX 1.5")
    check("serialNumber" not in bom, f"{name}: no random serial number (SOURCE_DATE_EPOCH)")
    check(f"file://{ROOT}" not in text, f"{name}: does not name the checkout's path {ROOT}")
    metadata = bom.get("metadata", {})
    check(metadata.get("component", {}).get("name") == package, f"{name}: describes {package}")
    triples = [p.get("value") for p in metadata.get("properties", []) if p.get("name") == TARGET_PROPERTY]
    check(triples == [target], f"{name}: for {target} (its {TARGET_PROPERTY}: {triples})")
    components = bom.get("components", [])
    listed = {(c.get("name"), c.get("version")) for c in components}
    for crate in wanted:
        versions = [p["version"] for p in lock.get(crate, [])]
        check(len(versions) == 1, f"Cargo.lock has one {crate} ({versions})")
        found = [c for c in components if c.get("name") == crate]
        check([c.get("version") for c in found] == versions[:1],
              f"{name}: lists {crate} {versions[:1]} (lists {[c.get('version') for c in found]})")
        checksum = next((p.get("checksum") for p in lock.get(crate, []) if "checksum" in p), None)
        if checksum and found:
            hashes = [h.get("content") for h in found[0].get("hashes", []) if h.get("alg") == "SHA-256"]
            check(hashes == [checksum], f"{name}: {crate}'s SHA-256 is Cargo.lock's checksum")
    for crate in absent:
        check(all(c.get("name") != crate for c in components), f"{name}: does not list {crate}")
    built = built_crates(package, target) - {(package, metadata.get("component", {}).get("version"))}
    missing = sorted(built - listed)
    check(not missing, f"{name}: lists all {len(built)} crates `cargo tree` builds for {target} (missing: {missing})")
    extra = sorted(listed - built)
    if extra:
        print(f"check-sbom: note: {name} also lists {len(extra)} crates that `cargo tree -p {package} --target "
              f"{target}` leaves out (features other workspace members enable): "
              + ", ".join(f"{n} {v}" for n, v in extra), file=sys.stderr)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: check-sbom.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    lock = lock_packages()
    check_sbom(out / "egress-identity.wasm.cdx.json", "egress-identity-filter", WASM_TARGET,
               ["proxy-wasm", "egress-identity-core"], ["clap"], lock)
    cli = sorted(out.glob("egress-identity-cli.*.cdx.json"))
    check(bool(cli), f"{out}: at least one egress-identity-cli.<target>.cdx.json")
    for path in cli:
        target = path.name.removeprefix("egress-identity-cli.").removesuffix(".cdx.json")
        check_sbom(path, "egress-identity-cli", target, ["clap", "egress-identity-core"], ["proxy-wasm"], lock)
    print(f"check-sbom: {len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
