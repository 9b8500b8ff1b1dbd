#!/usr/bin/env bash
# Runs crypto-simd's unit tests on an emulated AVX-512 CPU (Bochs, Intel Tiger Lake model), so
# the code paths a development machine without AVX-512 only compiles are executed and compared
# with the portable reference: the `vaes512` AES-CTR backend and the sixteen-lane AVX-512F
# SHA-1 (crypto-simd/src/multi512.rs). Optional check, not part of .ci/run.
#
# What it does: installs what is missing (apt-get), builds the crypto-simd test binary and a
# small CPUID/instruction check (scripts/avx512-emu/cpucheck.c), packs them with a static busybox
# into an initramfs, boots a Debian kernel from an isolinux CD image in Bochs with the guest
# console on COM1 written to a file, and reads the results back. Exits non-zero if the guest does
# not report AVX-512F, VAES and VPCLMULQDQ (or they compute wrongly), if any test fails, if a
# test says it skipped the AVX-512 path, or if the guest does not finish in time.
# Images and logs: target/avx512-emu/ (serial.log is the guest console, bochs.log Bochs' own).
#
# Settings (environment):
#   AVX512_EMU_MODEL    Bochs CPU model (default tigerlake; corei7_icelake_u works too)
#   AVX512_EMU_PROFILE  release (default) or debug: how the test binary is built
#   AVX512_EMU_FILTER   test name filters passed to the test binary (default: all its tests)
#   AVX512_EMU_TIMEOUT  seconds to wait for the guest (default 2400)
#   AVX512_EMU_BENCH    1: also run `chive-bench crypto --backend vaes512` once in the guest, only
#                       to see that it runs (its timings under emulation mean nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/avx512-emu
MODEL=${AVX512_EMU_MODEL:-tigerlake}
PROFILE=${AVX512_EMU_PROFILE:-release}
FILTER=${AVX512_EMU_FILTER:-}
TIMEOUT=${AVX512_EMU_TIMEOUT:-2400}
BENCH=${AVX512_EMU_BENCH:-0}
mkdir -p "$OUT"

log() { echo "avx512-emu: $*" >&2; }

# --- host tools -------------------------------------------------------------------------------
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
missing=()
for p in bochs bochsbios vgabios busybox-static isolinux syslinux-common xorriso cpio gcc libc6-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get install -y "${missing[@]}" >&2
fi

# --- guest kernel (Debian's generic amd64 kernel: 8250 console and initramfs are built in) ------
KERNEL=$OUT/vmlinuz
if [ ! -s "$KERNEL" ]; then
    pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
    [ -n "$pkg" ] || { log "cannot resolve linux-image-amd64"; exit 1; }
    log "downloading $pkg"
    rm -rf "$OUT/dl" && mkdir -p "$OUT/dl"
    (cd "$OUT/dl" && apt-get download "$pkg" >&2)
    dpkg-deb --fsys-tarfile "$OUT"/dl/"$pkg"_*.deb | tar -x -C "$OUT/dl" --wildcards './boot/vmlinuz-*'
    cp "$OUT"/dl/boot/vmlinuz-* "$KERNEL"
    rm -rf "$OUT/dl"
fi

# --- guest programs -----------------------------------------------------------------------------
gcc -O1 -static -o "$OUT/cpucheck" scripts/avx512-emu/cpucheck.c
profile_flag=()
[ "$PROFILE" = release ] && profile_flag=(--release)
log "building the crypto-simd test binary ($PROFILE)"
TESTBIN=$(cargo test -p crypto-simd --lib --no-run "${profile_flag[@]}" --message-format=json |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
[ -x "$TESTBIN" ] || { log "no test binary"; exit 1; }
BENCHBIN=
if [ "$BENCH" = 1 ]; then
    log "building chive-bench ($PROFILE)"
    BENCHBIN=$(cargo build -p bench --bin chive-bench "${profile_flag[@]}" --message-format=json |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
    [ -x "$BENCHBIN" ] || { log "no chive-bench binary"; exit 1; }
fi

# --- initramfs ----------------------------------------------------------------------------------
RD=$OUT/rootfs
rm -rf "$RD"
mkdir -p "$RD"/{bin,dev,proc,sys,tmp}
cp /bin/busybox "$RD/bin/busybox"
cp "$OUT/cpucheck" "$RD/bin/cpucheck"
strip -o "$RD/bin/crypto-simd-tests" "$TESTBIN"
[ -z "$BENCHBIN" ] || strip -o "$RD/bin/chive-bench" "$BENCHBIN"
# Shared libraries (and the loader) the Rust binaries need, at their host paths.
for b in "$RD/bin/crypto-simd-tests" ${BENCHBIN:+"$RD/bin/chive-bench"}; do
    for lib in $(ldd "$b" | grep -o '/[^ ]*'); do
        mkdir -p "$RD$(dirname "$lib")"
        cp -L "$lib" "$RD$lib"
    done
done
cat >"$RD/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "GUEST: booted after \$(cut -d' ' -f1 /proc/uptime) s (guest clock)"
echo "GUEST: cpu flags: \$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(aes|pclmulqdq|avx2|sha_ni|avx512f|avx512bw|avx512vl|vaes|vpclmulqdq)\$' | tr '\n' ' ')"
/bin/cpucheck
echo "GUEST: cpucheck rc=\$?"
cd /tmp
/bin/crypto-simd-tests --test-threads=1 --nocapture $FILTER 2>&1
echo "GUEST: tests rc=\$?"
if [ -x /bin/chive-bench ]; then
    set -o pipefail
    /bin/chive-bench crypto --backend vaes512 2>&1 | tail -n 40
    echo "GUEST: bench rc=\$?"
fi
echo "GUEST: DONE"
sync
poweroff -f
EOF
chmod +x "$RD/init"
(cd "$RD" && find . | cpio -o -H newc --quiet) >"$OUT/initrd.cpio"

# Bochs 2.7 reports PKRU in XCR0's supported mask (CPUID 0xd.0) but gives it no size or offset
# (sub-leaf 9 is all zero), and its XSAVEC/XSAVES size (CPUID 0xd.1 EBX) is the standard-format
# size. Linux then finds its XSAVE layout inconsistent and turns XSAVE off, and with it AVX and
# AVX-512 for user space. Hiding XSAVEC (321), XSAVES (323), PKU (515) and OSPKE (516) leaves
# the standard XSAVE layout (x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM), which is consistent.
KARGS_XSTATE="nopku clearcpuid=321,323,515,516"

# --- boot CD --------------------------------------------------------------------------------------
ISO=$OUT/iso
rm -rf "$ISO"
mkdir -p "$ISO/isolinux"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$ISO/isolinux/"
cp "$KERNEL" "$ISO/vmlinuz"
cp "$OUT/initrd.cpio" "$ISO/initrd"
cat >"$ISO/isolinux/isolinux.cfg" <<EOF
default chive
prompt 0
timeout 0
label chive
  kernel /vmlinuz
  append initrd=/initrd console=ttyS0,115200 loglevel=4 $KARGS_XSTATE mitigations=off nokaslr panic=-1 rdinit=/init
EOF
xorriso -as mkisofs -quiet -o "$OUT/boot.iso" -b isolinux/isolinux.bin -c isolinux/boot.cat \
    -no-emul-boot -boot-load-size 4 -boot-info-table "$ISO" >&2

# --- Bochs --------------------------------------------------------------------------------------
cat >"$OUT/bochsrc" <<EOF
megs: 1024
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
cpu: model=$MODEL, count=1, ips=200000000, reset_on_triple_fault=0
pci: enabled=1, chipset=i440fx
ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14
ata0-master: type=cdrom, path="$OUT/boot.iso", status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev="$OUT/serial.log"
# Debian's Bochs has no "nogui" display; the VNC one, not waiting for a client, costs nothing.
display_library: rfb, options="timeout=0"
clock: sync=none, time0=local
log: $OUT/bochs.log
panic: action=fatal
error: action=report
info: action=report
debug: action=ignore
EOF
rm -f "$OUT/serial.log" "$OUT/bochs.log"
log "booting ($MODEL); guest console: $OUT/serial.log"
start=$(date +%s)
# Debian's Bochs has its debugger built in and stops before the first instruction: `c` goes on.
echo c >"$OUT/bochs-debugger.rc"
bochs -q -f "$OUT/bochsrc" -rc "$OUT/bochs-debugger.rc" </dev/null >"$OUT/bochs.out" 2>&1 &
bochs_pid=$!
trap 'kill "$bochs_pid" 2>/dev/null || true' EXIT
done_ok=0
while kill -0 "$bochs_pid" 2>/dev/null; do
    if grep -q '^GUEST: DONE' "$OUT/serial.log" 2>/dev/null; then
        done_ok=1
        break
    fi
    if [ $(($(date +%s) - start)) -ge "$TIMEOUT" ]; then
        log "guest did not finish within ${TIMEOUT}s"
        break
    fi
    sleep 5
done
kill "$bochs_pid" 2>/dev/null || true
wait "$bochs_pid" 2>/dev/null || true
trap - EXIT
grep -q '^GUEST: DONE' "$OUT/serial.log" 2>/dev/null && done_ok=1
log "guest ran $(($(date +%s) - start)) s wall"

# --- verdict ------------------------------------------------------------------------------------
S=$OUT/serial.log
grep -E '^(GUEST|AVX512-CHECK):|^test |^test result|^running|multi-lane SHA-1|supported backends' "$S" >&2 || true
fail=0
[ "$done_ok" = 1 ] || { log "FAIL: guest did not report completion"; fail=1; }
grep -q '^AVX512-CHECK: PASS' "$S" || { log "FAIL: guest CPU lacks AVX-512F/VAES/VPCLMULQDQ or computed them wrongly"; fail=1; }
grep -q '^GUEST: tests rc=0' "$S" || { log "FAIL: tests failed (or did not run)"; fail=1; }
grep -q '^test result: ok\.' "$S" || { log "FAIL: no passing test result"; fail=1; }
if grep -q 'SKIPPED' "$S"; then
    log "FAIL: a test skipped its AVX-512 path"
    fail=1
fi
if [ -z "$FILTER" ]; then
    grep -q 'multi-lane SHA-1: Some(.*wide: Some(Avx512' "$S" || { log "FAIL: the sixteen-lane SHA-1 was not chosen"; fail=1; }
    grep -q 'supported backends: \[Vaes512' "$S" || { log "FAIL: vaes512 is not the first supported backend"; fail=1; }
fi
if [ "$BENCH" = 1 ]; then
    grep -q '^GUEST: bench rc=0' "$S" || { log "FAIL: chive-bench did not run"; fail=1; }
fi
if [ "$fail" = 0 ]; then
    log "PASS"
fi
exit "$fail"
