#!/usr/bin/env bash
# The toolchain for a static CLI build (scripts/release.sh):
#
#   scripts/cli-target.sh setup TARGET    install what TARGET needs (rustup target, Debian C compiler), exit 1
#                                         when this machine cannot have it
#   scripts/cli-target.sh cc TARGET       the C compiler for TARGET (ring's C and assembly)
#   scripts/cli-target.sh linker TARGET   the linker for TARGET
#
# Targets: x86_64-unknown-linux-musl (ring's C by musl-gcc, Debian musl-tools; linked by cc with Rust's own musl
# start files: musl-gcc as the linker would make a dynamically linked binary) and aarch64-unknown-linux-musl (Debian's
# aarch64 cross gcc; Rust's musl targets bring their own C library and start files, so a glibc cross compiler
# links them).
set -Eeuo pipefail

cmd="${1:-}"
target="${2:-}"
case "$target" in
    x86_64-unknown-linux-musl) cc=musl-gcc linker=cc package=musl-tools ;;
    aarch64-unknown-linux-musl) cc=aarch64-linux-gnu-gcc linker=aarch64-linux-gnu-gcc package=gcc-aarch64-linux-gnu ;;
    *) echo "cli-target: unsupported target '$target'" >&2; exit 2 ;;
esac

case "$cmd" in
    cc) echo "$cc" ;;
    linker) echo "$linker" ;;
    setup)
        if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
            echo "cli-target: rustup target add $target" >&2
            rustup target add "$target" >&2 || { echo "cli-target: rustup cannot add $target" >&2; exit 1; }
        fi
        if ! command -v "$cc" >/dev/null; then
            sudo=()
            [ "$(id -u)" = 0 ] || sudo=(sudo)
            echo "cli-target: installing $package (apt-get)" >&2
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >&2 ||
                { echo "cli-target: apt-get install $package failed" >&2; exit 1; }
        fi
        ;;
    *) echo "usage: scripts/cli-target.sh setup|cc|linker TARGET" >&2; exit 2 ;;
esac
