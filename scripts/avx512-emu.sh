#!/usr/bin/env bash
# Runs crypto-simd's unit tests on emulated AVX-512 CPUs (Bochs 2.7), so the code paths a
# development machine without AVX-512 only compiles are executed and compared with the portable
# reference: the `vaes512` AES-CTR backend and the sixteen-lane AVX-512F SHA-1
# (crypto-simd/src/multi512.rs). Optional check, not part of .ci/run; about 9 minutes here.
#
# What it does: installs what is missing (apt-get), builds the crypto-simd release test binary
# and a small CPUID/instruction check (scripts/avx512-emu/cpucheck.c), packs them with a static
# busybox into an initramfs, boots a Debian kernel from an isolinux CD image in Bochs with the
# guest console on COM1 written to a file, and reads the results back. Two guests:
#   vaes  Ice Lake model (AVX-512F/BW/VL, VAES, VPCLMULQDQ): every test but the SHA-1 ones;
#         must report VAES/VPCLMULQDQ computing like AES-NI/PCLMULQDQ and rank vaes512 first.
#   sha1  Skylake-X model (AVX-512F, no SHA-NI): every test; the self-test must pick the
#         sixteen-lane SHA-1. (Bochs' SHA-NI is wrong; see SKIP_SHA_NI.)
# Exits non-zero if a guest lacks AVX-512F (or VAES where required), if any test fails, if a
# test says it skipped the AVX-512 path, or if a guest does not finish in time.
# Images and logs: target/avx512-emu/ (serial.NAME.log is a guest's console, bochs.NAME.log
# Bochs' own).
#
# Settings (environment):
#   AVX512_EMU_MODEL    Bochs CPU model of the vaes guest (default corei7_icelake_u; tigerlake has
#                       the same features but was not tried with the kernel arguments below)
#   AVX512_EMU_PROFILE  release (default) or debug: how the test binary is built
#   AVX512_EMU_FILTER   test name filters passed to the test binary (default: all its tests)
#   AVX512_EMU_TIMEOUT  seconds to wait for each guest (default 2400)
#   AVX512_EMU_BENCH    1: also run `chive-bench crypto --backend vaes512` once in each guest, only
#                       to see that it runs (not tried yet; timings under emulation mean nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/avx512-emu
MODEL=${AVX512_EMU_MODEL:-corei7_icelake_u}
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

# Bochs 2.7's SHA-NI is wrong (the `sha1` crate, which uses SHA-NI where CPUID has it, gets
# FIPS 180 SHA-1("abc") wrong on the Ice Lake model; the same binary is right on Skylake-X, which
# has no SHA-NI). Every SHA-1 test compares against that crate, so on a model with SHA-NI they are
# skipped, and they run on Skylake-X (AVX-512F, no SHA-NI: the sixteen-lane pass against the
# `sha1` crate's portable code). The AES tests (vaes512 included) run on the SHA-NI model.
SKIP_SHA_NI="--skip reference::tests::fips180_sha1 --skip sha1state:: --skip multi512:: --skip multi:: --skip x86::tests::sha1 --skip tests::faulty_multi_lane_sha1_is_rejected --skip tests::self_test_passes_for_every_supported_backend"

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
# The test selection comes from the kernel command line: chive.tests=skip-sha-ni or all.
if grep -q 'chive.tests=skip-sha-ni' /proc/cmdline; then
    set -- $SKIP_SHA_NI
else
    set --
fi
/bin/crypto-simd-tests --test-threads=1 --nocapture $FILTER "\$@" 2>&1
echo "GUEST: tests rc=\$?"
if [ -x /bin/chive-bench ]; then
    set -o pipefail
    /bin/chive-bench crypto --backend vaes512 2>&1 | tail -n 40
    echo "GUEST: bench rc=\$?"
fi
echo "GUEST: DONE"
# Let the serial port drain (the guest clock runs at Bochs' instruction rate, so this is short).
sleep 3
poweroff -f
EOF
chmod +x "$RD/init"
(cd "$RD" && find . | cpio -o -H newc --quiet) >"$OUT/initrd.cpio"

# Kernel arguments working around Bochs 2.7:
# - It reports PKRU in XCR0's supported mask (CPUID 0xd.0) but gives it no size or offset
#   (sub-leaf 9 is all zero), and its XSAVEC/XSAVES size (CPUID 0xd.1 EBX) is the standard-format
#   size. Linux then finds its XSAVE layout inconsistent and turns XSAVE off, and with it AVX and
#   AVX-512 for user space. Hiding XSAVEOPT (320), XSAVEC (321), XSAVES (323), PKU (515) and
#   OSPKE (516) leaves the standard XSAVE layout (x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM).
# - The Ice Lake and Tiger Lake models crash Linux 6.1 while it patches its own text at boot
#   (its stack ends up inside .entry.text); Skylake-X does not. Hidden from the kernel for them
#   (user space still sees every CPUID bit): FSRM (580), PCID (145), INVPCID (298), RDPID (534),
#   UMIP (514), FSGSBASE, SMAP, SMEP, IBT.
# Features hidden this way are hidden from the kernel only: CPUID in user space (cpufeatures,
# std::arch) still reports them, and XCR0 still enables the AVX-512 state.
KARGS_XSTATE="nopku ibt=off nofsgsbase nosmap nosmep clearcpuid=320,321,323,515,516,145,298,534,514,580"

# --- boot CD --------------------------------------------------------------------------------------
# make_iso NAME TESTS: boot.NAME.iso whose kernel command line says chive.tests=TESTS.
make_iso() {
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
  append initrd=/initrd console=ttyS0,115200 loglevel=4 $KARGS_XSTATE mitigations=off nokaslr panic=-1 rdinit=/init CHIVE_TESTS
EOF
sed -i "s/CHIVE_TESTS/chive.tests=$2/" "$ISO/isolinux/isolinux.cfg"
xorriso -as mkisofs -quiet -o "$OUT/boot.$1.iso" -b isolinux/isolinux.bin -c isolinux/boot.cat \
    -no-emul-boot -boot-load-size 4 -boot-info-table "$ISO" >&2
}

# --- Bochs --------------------------------------------------------------------------------------
# run_guest NAME MODEL TESTS: boots MODEL, leaves the console in serial.NAME.log, sets `fail`.
fail=0
run_guest() {
local name=$1 model=$2 tests=$3
make_iso "$name" "$tests"
cat >"$OUT/bochsrc.$name" <<EOF
megs: 1024
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
cpu: model=$model, count=1, ips=200000000, reset_on_triple_fault=0
pci: enabled=1, chipset=i440fx
ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14
ata0-master: type=cdrom, path="$OUT/boot.$name.iso", status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev="$OUT/serial.$name.log"
# Debian's Bochs has no "nogui" display; the VNC one, not waiting for a client, costs nothing.
display_library: rfb, options="timeout=0"
clock: sync=none, time0=local
log: $OUT/bochs.$name.log
panic: action=fatal
error: action=report
info: action=report
debug: action=ignore
EOF
rm -f "$OUT/serial.$name.log" "$OUT/bochs.$name.log"
log "$name: booting ($model); guest console: $OUT/serial.$name.log"
start=$(date +%s)
# Debian's Bochs has its debugger built in and stops before the first instruction: `c` goes on.
echo c >"$OUT/bochs-debugger.rc"
bochs -q -f "$OUT/bochsrc.$name" -rc "$OUT/bochs-debugger.rc" </dev/null >"$OUT/bochs.$name.out" 2>&1 &
bochs_pid=$!
trap 'kill "$bochs_pid" 2>/dev/null || true' EXIT
done_ok=0
while kill -0 "$bochs_pid" 2>/dev/null; do
    if grep -q '^GUEST: DONE' "$OUT/serial.$name.log" 2>/dev/null; then
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
grep -q '^GUEST: DONE' "$OUT/serial.$name.log" 2>/dev/null && done_ok=1
log "$name: guest ran $(($(date +%s) - start)) s wall"

# --- verdict ------------------------------------------------------------------------------------
S=$OUT/serial.$name.log
grep -E '^(GUEST|AVX512-CHECK):|^test |^test result|^running|multi-lane SHA-1|supported' "$S" >&2 || true
f() { log "$name: FAIL: $*"; fail=1; }
[ "$done_ok" = 1 ] || f "guest did not report completion"
grep -q '^AVX512-CHECK: AVX512F PASS' "$S" || f "guest CPU lacks AVX-512F (or its register state)"
grep -q '^GUEST: tests rc=0' "$S" || f "tests failed (or did not run)"
grep -q '^test result: ok\.' "$S" || f "no passing test result"
! grep -q 'SKIPPED' "$S" || f "a test skipped its AVX-512 path"
if [ "$tests" = skip-sha-ni ]; then
    grep -q '^AVX512-CHECK: VAES PASS' "$S" || f "guest CPU lacks VAES/VPCLMULQDQ or computed them wrongly"
    [ -n "$FILTER" ] || grep -q 'supported: \[Vaes512' "$S" || f "vaes512 is not the first supported backend"
else
    [ -n "$FILTER" ] || grep -q 'multi-lane SHA-1: Some(.*wide: Some(Avx512' "$S" ||
        f "the sixteen-lane SHA-1 was not chosen"
fi
if [ "$BENCH" = 1 ]; then
    grep -q '^GUEST: bench rc=0' "$S" || f "chive-bench did not run"
fi
}

# AES (vaes512 included) on a model with VAES; SHA-1 (the sixteen-lane pass included) on one
# without SHA-NI (see SKIP_SHA_NI).
run_guest vaes "$MODEL" skip-sha-ni
run_guest sha1 corei7_skylake_x all
if [ "$fail" = 0 ]; then
    log "PASS"
fi
exit "$fail"
