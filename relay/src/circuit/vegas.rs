//! The TOR_VEGAS congestion window of proposal 324 ("RTT-based Congestion Control for Tor",
//! §3.3, with RFC 3742 limited slow start), fed by the round-trip time of each circuit SENDME
//! (§2.1: from sending the DATA cell the SENDME acknowledges to its arrival), smoothed with
//! N-EWMA (§2.1.2), with the clock heuristics of §2.1.1. The BDP estimate is the congestion
//! window one (§3.1.2, `cwnd * RTT_min / RTT_ewma`), the one C tor's Vegas uses.
//!
//! Sans-io and clock-free: the caller measures each SENDME's round trip and passes it in
//! microseconds, or `None` when it has no clock; a round trip that is missing, zero or an
//! implausible jump updates nothing but the cells in flight, so without a clock the window
//! stays at `cwnd_init`.

/// Vegas's tunables (proposal 324 §6.5), in cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VegasParams {
    /// DATA cells one SENDME acknowledges (the hop's CC_RESPONSE).
    pub sendme_inc: u32,
    /// The window before any SENDME (`cc_cwnd_init`).
    pub cwnd_init: u32,
    /// The window never drops below this (`cc_cwnd_min`).
    pub cwnd_min: u32,
    /// Nor grows above this (`cc_cwnd_max`).
    pub cwnd_max: u32,
    /// Steady-state step (`cc_cwnd_inc`), every `cwnd_inc_rate` updates per window.
    pub cwnd_inc: u32,
    /// Steady-state updates per window (`cc_cwnd_inc_rate`).
    pub cwnd_inc_rate: u32,
    /// Slow start's increment per SENDME, in percent of `sendme_inc` (`cc_cwnd_inc_pct_ss`).
    pub cwnd_inc_pct_ss: u32,
    /// RFC 3742's cap: past it slow start grows more slowly (`cc_sscap_*`).
    pub ss_cap: u32,
    /// Slow start ends at this window at the latest (`cc_ss_max`).
    pub ss_max: u32,
    /// Estimated queue below which the steady state grows the window (`cc_vegas_alpha_*`).
    pub alpha: u32,
    /// Estimated queue above which it shrinks it (`cc_vegas_beta_*`).
    pub beta: u32,
    /// Estimated queue at which slow start ends (`cc_vegas_gamma_*`).
    pub gamma: u32,
    /// Estimated queue above which the window drops to BDP + delta (`cc_vegas_delta_*`).
    pub delta: u32,
    /// N of the RTT's N-EWMA after slow start, in percent of the SENDMEs per update
    /// (`cc_ewma_cwnd_pct`)...
    pub ewma_cwnd_pct: u32,
    /// ... at most this (`cc_ewma_max`).
    pub ewma_max: u32,
    /// N of the RTT's N-EWMA in slow start (`cc_ewma_ss`).
    pub ewma_ss: u32,
    /// The window counts as full with this many `sendme_inc` of room left
    /// (`cc_cwnd_full_gap`)...
    pub full_gap: u32,
    /// ... and as not full below this percentage in flight (`cc_cwnd_full_minpct`).
    pub full_minpct: u32,
    /// Whether "full" is kept for a whole window of SENDMEs rather than one update
    /// (`cc_cwnd_full_per_cwnd`).
    pub full_per_cwnd: bool,
    /// At `cwnd_min` after slow start, RTT_min moves this percentage of the way to the EWMA
    /// (`cc_rtt_reset_pct`).
    pub rtt_reset_pct: u32,
}

/// Cells in a full TLS record, the unit C tor's Vegas defaults are counted in.
const TLS_RECORD_CELLS: u32 = 31;
/// C tor's "outbuf" of two records.
const OUTBUF_CELLS: u32 = 2 * TLS_RECORD_CELLS;

impl VegasParams {
    /// The parameters for a circuit to an exit with the hop's `sendme_inc`: C tor 0.4.9's
    /// defaults for exit circuits where no consensus overrides them (queue thresholds
    /// alpha 3, beta 4, gamma 3 and delta 5 outbufs of 62 cells, slow-start cap 600, slow start
    /// at most 5000, slow start one `sendme_inc` per SENDME, full gap 4, minimum 25%), with
    /// the steady-state step of proposal 324 (`sendme_inc` once per window). `cwnd_max` is
    /// 10,000 cells (5 MB in flight) rather than C tor's `INT32_MAX`, which bounds what we keep
    /// per cell in flight.
    pub fn exit(sendme_inc: u8) -> VegasParams {
        let inc = u32::from(sendme_inc.max(1));
        VegasParams {
            sendme_inc: inc,
            cwnd_init: 4 * inc,
            cwnd_min: 4 * inc,
            cwnd_max: 10_000,
            cwnd_inc: inc,
            cwnd_inc_rate: 1,
            cwnd_inc_pct_ss: 100,
            ss_cap: 600,
            ss_max: 5000,
            alpha: 3 * OUTBUF_CELLS,
            beta: 4 * OUTBUF_CELLS,
            gamma: 3 * OUTBUF_CELLS,
            delta: 5 * OUTBUF_CELLS,
            ewma_cwnd_pct: 50,
            ewma_max: 10,
            ewma_ss: 2,
            full_gap: 4,
            full_minpct: 25,
            full_per_cwnd: true,
            rtt_reset_pct: 100,
        }
    }
}

/// A RTT this many times the smoothed one is a clock jump, and this many times smaller a stall
/// (proposal 324 §2.1.1).
const CLOCK_JUMP_RATIO: u64 = 5000;

/// One circuit's sending side under Vegas: how many DATA cells may be in flight.
#[derive(Debug, Clone)]
pub struct Vegas {
    p: VegasParams,
    cwnd: u32,
    inflight: u32,
    in_slow_start: bool,
    next_cc_event: u32,
    next_cwnd_event: u32,
    cwnd_full: bool,
    /// Smoothed RTT in microseconds; 0 before the first sample.
    ewma_rtt_us: u64,
    /// The lowest `ewma_rtt_us` seen (0 before the first sample).
    min_rtt_us: u64,
    /// The last zero round trip was a stall: a tiny one is taken as one too.
    clock_stalled: bool,
}

impl Vegas {
    /// A circuit with nothing in flight, in slow start at `p.cwnd_init`.
    pub fn new(p: VegasParams) -> Vegas {
        let cwnd = p.cwnd_init.clamp(p.cwnd_min.max(1), p.cwnd_max.max(1));
        Vegas {
            p,
            cwnd,
            inflight: 0,
            in_slow_start: true,
            next_cc_event: 0,
            next_cwnd_event: 0,
            cwnd_full: false,
            ewma_rtt_us: 0,
            min_rtt_us: 0,
            clock_stalled: false,
        }
    }

    /// The congestion window, in DATA cells.
    pub fn cwnd(&self) -> u32 {
        self.cwnd
    }

    /// DATA cells sent and not yet acknowledged.
    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// DATA cells that may be sent now.
    pub fn window(&self) -> u32 {
        self.cwnd.saturating_sub(self.inflight)
    }

    /// Whether slow start is still on.
    pub fn in_slow_start(&self) -> bool {
        self.in_slow_start
    }

    /// The smoothed and the lowest smoothed round trip, in microseconds (0 before any).
    pub fn rtt_us(&self) -> (u64, u64) {
        (self.ewma_rtt_us, self.min_rtt_us)
    }

    /// One DATA cell was sent.
    pub fn on_sent(&mut self) {
        self.inflight = self.inflight.saturating_add(1);
    }

    /// A circuit SENDME arrived, `rtt_us` after the DATA cell it acknowledges was sent
    /// (`None` without a clock). Runs the §3.3 update, then takes `sendme_inc` cells out of
    /// flight.
    pub fn on_sendme(&mut self, rtt_us: Option<u64>) {
        self.next_cc_event = self.next_cc_event.saturating_sub(1);
        self.next_cwnd_event = self.next_cwnd_event.saturating_sub(1);
        if rtt_us.is_some_and(|rtt| self.take_rtt(rtt)) {
            self.update();
        }
        self.inflight = self.inflight.saturating_sub(self.p.sendme_inc);
    }

    /// Folds a round trip into the EWMA; false if the clock heuristics reject it.
    fn take_rtt(&mut self, rtt: u64) -> bool {
        if rtt == 0 {
            self.clock_stalled = true;
            return false;
        }
        if self.ewma_rtt_us > 0 && !self.in_slow_start {
            if rtt > self.ewma_rtt_us.saturating_mul(CLOCK_JUMP_RATIO) {
                return false;
            }
            if rtt.saturating_mul(CLOCK_JUMP_RATIO) < self.ewma_rtt_us && self.clock_stalled {
                return false;
            }
        }
        self.clock_stalled = false;
        let n = u64::from(if self.in_slow_start {
            self.p.ewma_ss
        } else {
            (self.update_rate() * self.p.ewma_cwnd_pct / 100)
                .min(self.p.ewma_max)
                .max(2)
        });
        // §2.1.2: the rearranged form, so rounding matches other implementations.
        self.ewma_rtt_us = if self.ewma_rtt_us == 0 {
            rtt
        } else {
            let sum = 2 * u128::from(rtt) + u128::from(n - 1) * u128::from(self.ewma_rtt_us);
            u64::try_from(sum / u128::from(n + 1)).unwrap_or(u64::MAX)
        };
        if self.min_rtt_us == 0 || self.ewma_rtt_us < self.min_rtt_us {
            self.min_rtt_us = self.ewma_rtt_us;
        }
        true
    }

    /// SENDMEs per window, rounded.
    fn sendmes_per_cwnd(&self) -> u32 {
        (self.cwnd + self.p.sendme_inc / 2) / self.p.sendme_inc
    }

    /// SENDMEs between window updates: every one in slow start.
    fn update_rate(&self) -> u32 {
        if self.in_slow_start {
            1
        } else {
            let per = self.p.cwnd_inc_rate.max(1) * self.p.sendme_inc;
            (self.cwnd + per / 2) / per
        }
    }

    /// RFC 3742's slow-start increment per SENDME.
    fn ss_inc(&self) -> u32 {
        if self.cwnd <= self.p.ss_cap {
            (self.p.cwnd_inc_pct_ss * self.p.sendme_inc + 50) / 100
        } else {
            let k = u64::from(self.p.sendme_inc) * u64::from(self.p.ss_cap);
            let inc = (k + u64::from(self.cwnd)) / (2 * u64::from(self.cwnd));
            u32::try_from(inc).unwrap_or(u32::MAX).max(1)
        }
    }

    /// The §3.3 update, with a fresh RTT sample.
    fn update(&mut self) {
        let bdp = u128::from(self.cwnd) * u128::from(self.min_rtt_us)
            / u128::from(self.ewma_rtt_us.max(1));
        let bdp = u32::try_from(bdp).unwrap_or(u32::MAX);
        let queue_use = self.cwnd.saturating_sub(bdp);
        let gap = self.p.full_gap.saturating_mul(self.p.sendme_inc);
        if self.inflight.saturating_add(gap) >= self.cwnd {
            self.cwnd_full = true;
        } else if u64::from(self.inflight) * 100
            < u64::from(self.p.full_minpct) * u64::from(self.cwnd)
        {
            self.cwnd_full = false;
        }
        if self.in_slow_start {
            if queue_use < self.p.gamma {
                if self.cwnd_full {
                    let inc = self.ss_inc();
                    self.cwnd = self.cwnd.saturating_add(inc);
                    // Slower than the steady state's growth over a window: slow start is done.
                    if inc.saturating_mul(self.sendmes_per_cwnd())
                        <= self.p.cwnd_inc.saturating_mul(self.p.cwnd_inc_rate)
                    {
                        self.in_slow_start = false;
                    }
                }
            } else {
                self.in_slow_start = false;
                self.cwnd = bdp.saturating_add(self.p.gamma);
            }
            if self.cwnd >= self.p.ss_max {
                self.cwnd = self.p.ss_max;
                self.in_slow_start = false;
            }
        } else if self.next_cc_event == 0 {
            if queue_use > self.p.delta {
                self.cwnd = bdp
                    .saturating_add(self.p.delta)
                    .saturating_sub(self.p.cwnd_inc);
            } else if queue_use > self.p.beta {
                self.cwnd = self.cwnd.saturating_sub(self.p.cwnd_inc);
            } else if self.cwnd_full && queue_use < self.p.alpha {
                self.cwnd = self.cwnd.saturating_add(self.p.cwnd_inc);
            }
        }
        self.cwnd = self
            .cwnd
            .clamp(self.p.cwnd_min.max(1), self.p.cwnd_max.max(1));
        if !self.in_slow_start && self.cwnd == self.p.cwnd_min {
            // §3.1.2: at the floor, let RTT_min catch up so the circuit can climb out.
            let (lo, hi) = (
                self.min_rtt_us.min(self.ewma_rtt_us),
                self.min_rtt_us.max(self.ewma_rtt_us),
            );
            let pct = u128::from(self.p.rtt_reset_pct.min(100));
            let mix = (u128::from(hi) * pct + u128::from(lo) * (100 - pct)) / 100;
            self.min_rtt_us = u64::try_from(mix).unwrap_or(hi);
        }
        if self.next_cc_event == 0 {
            self.next_cc_event = self.update_rate();
        }
        if self.next_cwnd_event == 0 {
            self.next_cwnd_event = self.sendmes_per_cwnd();
        }
        let reset_full = if self.p.full_per_cwnd {
            self.next_cwnd_event == self.sendmes_per_cwnd()
        } else {
            self.next_cc_event == self.update_rate()
        };
        if reset_full {
            self.cwnd_full = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INC: u32 = 31;

    fn vegas() -> Vegas {
        Vegas::new(VegasParams::exit(31))
    }

    /// Keeps the window full and acknowledges one SENDME's worth with round trip `rtt`.
    fn round(v: &mut Vegas, rtt: Option<u64>) {
        while v.window() > 0 {
            v.on_sent();
        }
        v.on_sendme(rtt);
    }

    #[test]
    fn starts_at_cwnd_init_and_bounds_what_is_in_flight() {
        let mut v = vegas();
        assert_eq!((v.cwnd(), v.window(), v.inflight()), (124, 124, 0));
        for _ in 0..124 {
            v.on_sent();
        }
        assert_eq!(v.window(), 0);
        v.on_sendme(None);
        assert_eq!((v.cwnd(), v.inflight(), v.window()), (124, 93, 31));
    }

    #[test]
    fn without_a_clock_the_window_stays_put() {
        let mut v = vegas();
        for _ in 0..100 {
            round(&mut v, None);
        }
        assert_eq!(v.cwnd(), 124);
        assert!(v.in_slow_start());
        // A zero round trip is a stalled clock: no update either.
        for _ in 0..10 {
            round(&mut v, Some(0));
        }
        assert_eq!(v.cwnd(), 124);
    }

    #[test]
    fn slow_start_grows_while_the_rtt_stays_flat() {
        let mut v = vegas();
        round(&mut v, Some(50_000));
        assert_eq!(
            v.cwnd(),
            124 + INC,
            "one sendme_inc per SENDME below the cap"
        );
        let mut last = v.cwnd();
        while v.in_slow_start() {
            round(&mut v, Some(50_000));
            assert!(v.cwnd() >= last);
            last = v.cwnd();
        }
        // Past the RFC 3742 cap the increments shrink until slow start ends on its own, at or
        // below the hard maximum.
        assert!(v.cwnd() > 600 && v.cwnd() <= 5000, "{}", v.cwnd());
        // Flat RTT, full window: the steady state keeps growing, one step per window.
        let before = v.cwnd();
        for _ in 0..(before / INC + 2) {
            round(&mut v, Some(50_000));
        }
        assert!(v.cwnd() > before, "{} -> {}", before, v.cwnd());
    }

    #[test]
    fn queueing_ends_slow_start_at_bdp_plus_gamma() {
        let mut v = vegas();
        for _ in 0..8 {
            round(&mut v, Some(10_000));
        }
        assert!(v.in_slow_start());
        let cwnd = v.cwnd();
        // The round trip doubles: half the window is queue, above gamma (186).
        let mut rtt = 10_000;
        while v.in_slow_start() {
            rtt += 10_000;
            round(&mut v, Some(rtt));
        }
        let (ewma, min) = v.rtt_us();
        assert!(ewma > min);
        assert!(v.cwnd() < cwnd + 3 * INC, "{} from {cwnd}", v.cwnd());
        assert!(v.cwnd() >= 124);
    }

    #[test]
    fn steady_state_backs_off_under_queueing() {
        let mut v = vegas();
        for _ in 0..20 {
            round(&mut v, Some(10_000));
        }
        let peak = v.cwnd();
        assert!(peak > 600, "{peak}");
        // The RTT keeps climbing: nearly all of the window is queue, so the window falls until
        // what it can hold of queue is no more than beta.
        let mut rtt = 10_000;
        for _ in 0..400 {
            rtt += 5_000;
            round(&mut v, Some(rtt));
            assert!(v.cwnd() >= 124 && v.cwnd() <= 10_000);
        }
        assert!(!v.in_slow_start());
        let p = VegasParams::exit(31);
        assert!(v.cwnd() <= p.beta + INC, "{} from {peak}", v.cwnd());
    }

    #[test]
    fn at_cwnd_min_rtt_min_catches_up_so_the_window_can_climb() {
        let mut p = VegasParams::exit(31);
        (p.alpha, p.beta, p.gamma, p.delta) = (5, 10, 10, 20);
        let mut v = Vegas::new(p);
        let mut rtt = 10_000;
        for _ in 0..200 {
            rtt += 5_000;
            round(&mut v, Some(rtt));
        }
        assert_eq!(v.cwnd(), p.cwnd_min, "queueing drives it to the floor");
        let (ewma, min) = v.rtt_us();
        assert!(min * 2 > ewma, "RTT_min moved up: {min} against {ewma}");
        for _ in 0..100 {
            round(&mut v, Some(rtt));
        }
        assert!(v.cwnd() > p.cwnd_min, "{}", v.cwnd());
    }

    #[test]
    fn a_window_not_in_use_does_not_grow() {
        let mut v = vegas();
        for _ in 0..50 {
            // One SENDME's worth in flight at a time: far below 25% of the window after a
            // while, and never within the full gap.
            for _ in 0..INC {
                v.on_sent();
            }
            v.on_sendme(Some(20_000));
        }
        assert!(v.cwnd() <= 124 + 2 * INC, "{}", v.cwnd());
    }

    #[test]
    fn clock_jumps_are_ignored_after_slow_start() {
        let mut v = vegas();
        for _ in 0..20 {
            round(&mut v, Some(1_000));
        }
        let mut rtt = 1_000;
        while v.in_slow_start() {
            rtt += 1_000;
            round(&mut v, Some(rtt));
        }
        let (ewma, _) = v.rtt_us();
        round(&mut v, Some(ewma * CLOCK_JUMP_RATIO * 2));
        assert_eq!(v.rtt_us().0, ewma, "a jump is not folded in");
    }

    #[test]
    fn huge_round_trips_do_not_overflow() {
        let mut v = vegas();
        for rtt in [u64::MAX, 1, u64::MAX / 2, u64::MAX, 3] {
            round(&mut v, Some(rtt));
            assert!(v.cwnd() >= 124 && v.cwnd() <= 10_000);
        }
    }

    #[test]
    fn the_window_never_passes_cwnd_max() {
        let mut p = VegasParams::exit(31);
        p.cwnd_max = 300;
        let mut v = Vegas::new(p);
        for _ in 0..500 {
            round(&mut v, Some(1_000));
            assert!(v.cwnd() <= 300);
        }
        assert_eq!(v.cwnd(), 300);
    }
}
