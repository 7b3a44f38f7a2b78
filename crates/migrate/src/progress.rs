//! What a migration shows while it runs: a progress bar on a terminal (objects, bytes, rates,
//! time left), else one plain line every interval (logs, CI).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use meridian_common::size::format_size;

/// Figures of the run so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    /// Source objects handled, including those of earlier runs (a resumed checkpoint).
    pub passed: u64,
    /// Bytes of the objects handled in this run (copied or found present).
    pub bytes_this_run: u64,
    pub passed_this_run: u64,
    /// The source's objects and bytes, once the count listing has finished.
    pub total: Option<(u64, u64)>,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    interval: Duration,
    last_line: Instant,
}

impl Progress {
    pub fn new(interval: Duration) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{bar:30} {pos}/{len} objects  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        let now = Instant::now();
        Progress { bar, started: now, interval, last_line: now }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn update(&mut self, f: &Figures) {
        let line = self.describe(f);
        match &self.bar {
            Some(bar) => {
                if let Some((objects, _)) = f.total {
                    bar.set_length(objects);
                }
                bar.set_position(f.passed);
                bar.set_message(line);
            }
            None if self.last_line.elapsed() >= self.interval => {
                self.last_line = Instant::now();
                match f.total {
                    Some((objects, _)) => eprintln!("migrate: {} of {objects} objects  {line}", f.passed),
                    None => eprintln!("migrate: {} objects  {line}", f.passed),
                }
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }

    /// `4.0 MiB of 9.1 MiB  812 objects/s  1.3 MiB/s  2m 10s left` (bytes of this run, of the
    /// source's total).
    fn describe(&self, f: &Figures) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = f.passed_this_run as f64 / secs;
        let byte_rate = (f.bytes_this_run as f64 / secs) as u64;
        let of_total = f.total.map(|(_, bytes)| format!(" of {}", format_size(bytes))).unwrap_or_default();
        let mut line =
            format!("{}{of_total}  {rate:.0} objects/s  {}/s", format_size(f.bytes_this_run), format_size(byte_rate));
        match f.total {
            Some((objects, _)) if rate > 0.0 => {
                let left = objects.saturating_sub(f.passed) as f64 / rate;
                line.push_str(&format!("  {} left", format_duration(Duration::from_secs_f64(left))));
            }
            Some(_) => {}
            None => line.push_str("  (counting the source)"),
        }
        line
    }
}

/// `1h 02m`, `2m 10s`, `7s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}
