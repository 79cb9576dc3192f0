//! [`MapOptions`] and [`Progress`]: chunk size and progress reporting for `map`, `imap` and
//! `imap_unordered`.

use std::fmt;
use std::time::{Duration, Instant};

/// How far a `map`, `imap` or `imap_unordered` has come: given to a progress callback after
/// each chunk of results arrives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Tasks whose results arrived.
    pub done: usize,
    /// Tasks in all, when known (`map`, and `imap` over an input whose length is known).
    pub total: Option<usize>,
    /// Time since the first task was submitted.
    pub elapsed: Duration,
}

impl Progress {
    /// Tasks per second so far.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.done as f64 / s } else { 0.0 }
    }

    /// The time left at the rate so far, when the total is known.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.total?;
        let rate = self.rate();
        if rate <= 0.0 {
            return None;
        }
        Some(Duration::from_secs_f64(
            total.saturating_sub(self.done) as f64 / rate,
        ))
    }
}

/// A progress callback.
type Callback = Box<dyn FnMut(&Progress)>;

/// Options of `map_with`, `imap_with` and `imap_unordered_with`: the chunk size and what to
/// report progress to. Nothing is printed unless asked.
///
/// ```
/// use multiproc_pool::MapOptions;
///
/// let opts = MapOptions::new()
///     .chunksize(10)
///     .on_progress(|p| eprintln!("{}/{:?} done, {:.0} tasks/s", p.done, p.total, p.rate()));
/// # let _ = opts;
/// ```
#[derive(Default)]
pub struct MapOptions {
    pub(crate) chunksize: Option<usize>,
    callbacks: Vec<Callback>,
    bar: bool,
}

impl fmt::Debug for MapOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapOptions")
            .field("chunksize", &self.chunksize)
            .field("callbacks", &self.callbacks.len())
            .field("bar", &self.bar)
            .finish()
    }
}

impl MapOptions {
    /// Python's defaults: chunk size `ceil(len / (4 × workers))` for `map`, 1 for `imap`; no
    /// progress.
    pub fn new() -> MapOptions {
        MapOptions::default()
    }

    /// Tasks per chunk (at least 1): a chunk goes to one worker as one record and comes back
    /// as one; a worker that dies fails the chunk it held.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n.max(1));
        self
    }

    /// Calls `f` (in the thread that waits for the results) each time a chunk of results
    /// arrives.
    pub fn on_progress(mut self, f: impl FnMut(&Progress) + 'static) -> Self {
        self.callbacks.push(Box::new(f));
        self
    }

    /// Draws a progress bar on stderr (done/total, rate, ETA) with `indicatif`.
    #[cfg(feature = "progress")]
    pub fn progress_bar(mut self) -> Self {
        self.bar = true;
        self
    }

    pub(crate) fn reporter(&mut self, total: Option<usize>) -> Reporter {
        Reporter {
            callbacks: std::mem::take(&mut self.callbacks),
            #[cfg(feature = "progress")]
            bar: self.bar.then(|| bar(total)),
            done: 0,
            total,
            start: Instant::now(),
        }
    }
}

#[cfg(feature = "progress")]
fn bar(total: Option<usize>) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressStyle};
    match total {
        Some(n) => {
            let b = ProgressBar::new(n as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}]",
            ) {
                b.set_style(style);
            }
            b
        }
        None => {
            let b = ProgressBar::no_length();
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} {pos} done [{elapsed_precise}, {per_sec}]")
            {
                b.set_style(style);
            }
            b
        }
    }
}

/// Reports progress for one map.
pub(crate) struct Reporter {
    callbacks: Vec<Callback>,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
    done: usize,
    total: Option<usize>,
    start: Instant,
}

impl Reporter {
    pub(crate) fn is_quiet(&self) -> bool {
        #[cfg(feature = "progress")]
        if self.bar.is_some() {
            return false;
        }
        self.callbacks.is_empty()
    }

    /// `n` more tasks are done.
    pub(crate) fn advance(&mut self, n: usize) {
        self.done += n;
        if self.is_quiet() {
            return;
        }
        let p = Progress {
            done: self.done,
            total: self.total,
            elapsed: self.start.elapsed(),
        };
        for cb in &mut self.callbacks {
            cb(&p);
        }
        #[cfg(feature = "progress")]
        if let Some(b) = &self.bar {
            b.set_position(self.done as u64);
        }
    }

    /// The map ended.
    pub(crate) fn finish(&mut self) {
        #[cfg(feature = "progress")]
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}
