//! `kvmtop -b`: the overview as text or JSON frames, like `top -b`.

use crate::cli::{BatchArgs, Extra};
use crate::frame;
use crate::out::emit;
use crate::render;
use crate::sampling::HeaderSampler;
use kvmreg::Config;
use std::time::Instant;

pub fn run(cfg: &Config, args: &BatchArgs, sample: bool, extra: Extra) -> anyhow::Result<()> {
    let delay = args.delay();
    let n = args.iterations.unwrap_or(1);
    let mut sampler = HeaderSampler::with(sample);
    let mut reader = frame::Reader::new(cfg);
    reader.columns(extra);
    let mut prev = reader.read();
    sampler.follow(&prev.guests);
    // Frames on a fixed beat (`-d` apart, not `-d` plus the frame's own
    // work); a frame that overran starts the next beat from now.
    let mut next = Instant::now();
    for _ in 0..n {
        next += delay;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
        let cur = reader.read();
        let f = frame::frame(&prev, &cur, sampler.take());
        let text = if args.json {
            format!("{}\n", serde_json::to_string(&f)?)
        } else {
            format!("{}\n", render::frame_text(&f, extra))
        };
        if !emit(&text)? {
            return Ok(());
        }
        sampler.follow(&cur.guests);
        prev = cur;
    }
    Ok(())
}
