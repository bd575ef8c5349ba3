//! `devd status [--json] [--watch]`: what the daemon reports, once or live.

use super::Ctx;
use super::screen::Screen;
use crate::control::{self, Request};
use crate::status::{Status, unix_ms};
use crate::status_view;
use anyhow::Context;
use std::time::Duration;

/// Options for rendering the status on stdout now.
fn view_options() -> status_view::Options {
    let term = console::Term::stdout();
    status_view::Options {
        color: console::colors_enabled(),
        width: term.size_checked().map(|(_, cols)| cols),
        now_ms: unix_ms(),
    }
}

async fn fetch_status(ctx: &Ctx) -> anyhow::Result<Option<serde_json::Value>> {
    Ok(control::request(&ctx.socket(), &Request::Status)
        .await
        .with_context(|| {
            format!(
                "cannot talk to the daemon at {}; if it hangs, `devd stop` and `devd start` again",
                ctx.socket().display()
            )
        })?
        .map(|r| r.data))
}

fn stopped_json(ctx: &Ctx) -> serde_json::Value {
    serde_json::json!({"state": "stopped", "workdir": ctx.workdir})
}

/// The text `devd status` shows for `v` (`None`: no daemon).
fn status_text(ctx: &Ctx, v: Option<&serde_json::Value>, opts: &status_view::Options) -> String {
    match v {
        None => status_view::not_running(&ctx.workdir),
        Some(v) => match serde_json::from_value::<Status>(v.clone()) {
            Ok(st) => status_view::render(&st, opts),
            Err(e) => format!(
                "the daemon answered with a status this devd cannot read ({e}); \
                 restart it with `devd stop && devd start` after an upgrade"
            ),
        },
    }
}

pub(super) async fn once(ctx: &Ctx, json: bool) -> anyhow::Result<()> {
    let v = fetch_status(ctx).await?;
    if json {
        println!("{}", v.unwrap_or_else(|| stopped_json(ctx)));
    } else {
        println!("{}", status_text(ctx, v.as_ref(), &view_options()));
    }
    Ok(())
}

/// How often `devd status --watch` polls.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// `devd status --watch`: on a terminal, redraw in place until Ctrl-C;
/// otherwise print the status again whenever it changed.
pub(super) async fn watch(ctx: &Ctx, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let tty = console::Term::stdout().is_term() && !json;
    let mut screen = tty.then(Screen::default);
    let mut last: Option<Option<serde_json::Value>> = None;
    let mut blocks = 0u64;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tick.tick() => {}
        }
        let v = fetch_status(ctx).await?;
        if let Some(screen) = &mut screen {
            let opts = view_options();
            let body = status_text(ctx, v.as_ref(), &opts);
            let title = format!(
                "devd status --watch · every {} ms · Ctrl-C to stop",
                WATCH_EVERY.as_millis()
            );
            let title = console::Style::new()
                .dim()
                .force_styling(opts.color)
                .apply_to(title)
                .to_string();
            screen.draw(&format!("{title}\n\n{body}"))?;
            continue;
        }
        if last.as_ref() == Some(&v) {
            continue;
        }
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(out, "{}", v.clone().unwrap_or_else(|| stopped_json(ctx)))?;
        } else {
            blocks += 1;
            if blocks > 1 {
                writeln!(out)?;
            }
            writeln!(out, "--- devd status #{blocks} ---")?;
            writeln!(out, "{}", status_text(ctx, v.as_ref(), &view_options()))?;
        }
        out.flush()?;
        last = Some(v);
    }
    if let Some(screen) = screen {
        screen.close()?;
    }
    Ok(())
}
