//! The output contract of the reference harness, and the round-robin runner.
//!
//! stdout: `name<TAB>median<TAB>unit`, one line per figure.
//! stderr: `#spread<TAB>name<TAB>min<TAB>median<TAB>max<TAB>n<TAB>unit` per figure, `#meta` lines,
//! and `#rounds<TAB>group<TAB>name<TAB>value...` (the value of each round, for per-round ratios).
//! Values are formatted as the C and Python suites format them (`%.0f`, `%.2f`, `%.4g`).

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The error type of every benchmark step.
pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Which family a figure belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// multiproc's own figures, named as in `mp_bench.py`.
    Multiproc,
    /// The machine's raw limits, named as in `bench/limits/*.c`.
    Limit,
}

/// Where figures go.
///
/// multiproc figures always go to stdout (spread to stderr).
/// Raw limits go to the file given by `--limits-out` under their exact names (spread to the
/// sibling `.err` file, where `compare.py` looks for it); without that option they go to stdout
/// under `limit:<name>`, because some raw-limit names (`pipe.throughput.*`) are also
/// multiproc figure names.
#[derive(Debug, Default)]
pub(crate) struct Out {
    limits: Option<(File, File)>,
}

impl Out {
    /// Sends raw limits to `path` (figures) and `path` with extension `.err` (spread).
    pub(crate) fn with_limits_file(path: &Path) -> io::Result<Self> {
        let figs = File::create(path)?;
        let errs = File::create(path.with_extension("err"))?;
        Ok(Self {
            limits: Some((figs, errs)),
        })
    }

    /// Writes the per-round values of a figure measured in rotation group `group` to the
    /// spread stream: `#rounds<TAB>group<TAB>name<TAB>v1<TAB>v2...`. Values of the same group
    /// and round index were measured in the same round, so their ratios can be taken per round.
    pub(crate) fn rounds(&mut self, family: Family, group: usize, name: &str, values: &[f64]) {
        let vals: Vec<String> = values.iter().map(|&v| fmt_value(v)).collect();
        let vals = vals.join("\t");
        let res = match (family, self.limits.as_mut()) {
            (Family::Limit, Some((_, errs))) => {
                writeln!(errs, "#rounds\t{group}\t{name}\t{vals}").and_then(|()| errs.flush())
            }
            (family, _) => {
                let prefix = if family == Family::Limit {
                    "limit:"
                } else {
                    ""
                };
                writeln!(io::stderr(), "#rounds\t{group}\t{prefix}{name}\t{vals}")
            }
        };
        if let Err(e) = res {
            eprintln!("#meta\twrite_error\t{e}");
        }
    }

    /// Emits the median of `values` as one figure; min/median/max go to the spread stream.
    pub(crate) fn emit(&mut self, family: Family, name: &str, values: &[f64], unit: &str) {
        if values.is_empty() {
            return;
        }
        let (lo, med, hi) = spread(values);
        let (med, lo, hi) = (fmt_value(med), fmt_value(lo), fmt_value(hi));
        let n = values.len();
        let res = match (family, self.limits.as_mut()) {
            (Family::Limit, Some((figs, errs))) => writeln!(figs, "{name}\t{med}\t{unit}")
                .and_then(|()| writeln!(errs, "#spread\t{name}\t{lo}\t{med}\t{hi}\t{n}\t{unit}"))
                .and_then(|()| figs.flush())
                .and_then(|()| errs.flush()),
            (family, _) => {
                let prefix = if family == Family::Limit {
                    "limit:"
                } else {
                    ""
                };
                let mut out = io::stdout().lock();
                writeln!(out, "{prefix}{name}\t{med}\t{unit}")
                    .and_then(|()| out.flush())
                    .and_then(|()| {
                        writeln!(
                            io::stderr(),
                            "#spread\t{prefix}{name}\t{lo}\t{med}\t{hi}\t{n}\t{unit}"
                        )
                    })
            }
        };
        if let Err(e) = res {
            eprintln!("#meta\twrite_error\t{e}");
        }
    }
}

/// Prints a `#meta` line on stderr.
pub(crate) fn meta(key: &str, value: impl std::fmt::Display) {
    eprintln!("#meta\t{key}\t{value}");
}

/// (min, median, max); the median of an even count is the mean of the middle two.
pub(crate) fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut s = values.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    };
    (s[0], med, s[n - 1])
}

/// Formats like the C suite's `fmt_value`: `%.0f` from 100, `%.2f` from 1, else `%.4g`.
pub(crate) fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        fmt_g4(v)
    }
}

/// C's `%.4g` for |v| < 1.
fn fmt_g4(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let exp = v.abs().log10().floor() as i32;
    if exp < -4 {
        // Scientific notation, trailing zeros of the mantissa removed, two-digit exponent.
        let s = format!("{v:.3e}");
        let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
        let mant = strip_zeros(mant);
        let e: i32 = e.parse().unwrap_or(0);
        let sign = if e < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", e.abs())
    } else {
        let decimals = (3 - exp).max(0) as usize;
        strip_zeros(&format!("{v:.decimals$}")).to_string()
    }
}

fn strip_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// One figure measured by repeating an inner loop.
pub(crate) trait Bench {
    /// The figure's name.
    fn name(&self) -> String;
    /// The figure's unit (`us`, `MB/s`, ...).
    fn unit(&self) -> &'static str;
    /// Which family the figure belongs to.
    fn family(&self) -> Family;
    /// Starts whatever lives across rounds (echo children, ...), for `rounds` rounds.
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        Ok(())
    }
    /// One repetition of the inner loop; returns the value of this repetition.
    ///
    /// Benches that measure several figures per repetition implement
    /// [`measure_all`](Self::measure_all) instead.
    fn measure(&mut self) -> Res<f64> {
        Err(format!("{}: measures several figures (measure_all)", self.name()).into())
    }
    /// The names of the figures one repetition measures, all in [`unit`](Self::unit)
    /// unless [`units`](Self::units) says otherwise (default: [`name`](Self::name) alone).
    fn names(&self) -> Vec<String> {
        vec![self.name()]
    }
    /// The unit of each figure of [`names`](Self::names) (default: [`unit`](Self::unit) for
    /// all), for a repetition that times figures of different kinds (`ms` and a speed-up in `x`).
    fn units(&self) -> Vec<&'static str> {
        vec![self.unit(); self.names().len()]
    }
    /// One repetition measuring every figure of [`names`](Self::names), in that order
    /// (default: [`measure`](Self::measure)). For figures timed in one loop, as the reference
    /// harness times `shm.create_1MiB`, `shm.attach_1MiB` and `shm.close_both_unlink`.
    fn measure_all(&mut self) -> Res<Vec<f64>> {
        Ok(vec![self.measure()?])
    }
    /// Stops what `setup` started.
    fn finish(&mut self) -> Res<()> {
        Ok(())
    }
}

/// Numbers the calls of [`run_rotated`] (the `group` of `#rounds` lines).
static GROUP: AtomicUsize = AtomicUsize::new(1);

/// Runs `benches` alternately, `rounds` rounds, rotating the order each round (round `r`
/// starts with bench `r mod n`), then emits each bench's median in list order.
///
/// Figures that are compared with each other are measured in the same rounds, so slow
/// phases of a shared, noisy machine hit all of them alike.
pub(crate) fn run_rotated(out: &mut Out, benches: &mut [Box<dyn Bench>], rounds: usize) -> Res<()> {
    let n = benches.len();
    if n == 0 || rounds == 0 {
        return Ok(());
    }
    for b in benches.iter_mut() {
        b.setup(rounds)?;
    }
    let names: Vec<Vec<String>> = benches.iter().map(|b| b.names()).collect();
    let units: Vec<Vec<&'static str>> = benches.iter().map(|b| b.units()).collect();
    // values[bench][figure][round]
    let mut values: Vec<Vec<Vec<f64>>> = names
        .iter()
        .map(|ns| vec![Vec::with_capacity(rounds); ns.len()])
        .collect();
    for r in 0..rounds {
        for k in 0..n {
            let i = (r + k) % n;
            let got = benches[i].measure_all()?;
            if got.len() != names[i].len() {
                return Err(format!(
                    "{}: {} values for {} figures",
                    benches[i].name(),
                    got.len(),
                    names[i].len()
                )
                .into());
            }
            for (fig, v) in values[i].iter_mut().zip(got) {
                fig.push(v);
            }
        }
    }
    for b in benches.iter_mut() {
        b.finish()?;
    }
    let group = GROUP.fetch_add(1, Ordering::Relaxed);
    for (((b, ns), us), vs) in benches.iter().zip(&names).zip(&units).zip(&values) {
        for ((name, unit), v) in ns.iter().zip(us).zip(vs) {
            out.emit(b.family(), name, v, unit);
            out.rounds(b.family(), group, name, v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_c() {
        assert_eq!(fmt_value(1234.4), "1234");
        assert_eq!(fmt_value(12.345), "12.35");
        assert_eq!(fmt_value(0.5), "0.5");
        assert_eq!(fmt_value(0.123456), "0.1235");
        assert_eq!(fmt_value(0.00012345), "0.0001234");
        assert_eq!(fmt_value(0.0000123), "1.23e-05");
        assert_eq!(fmt_value(0.0), "0");
    }

    #[test]
    fn median_even_and_odd() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
    }
}
