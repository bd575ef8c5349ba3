//! The frame `devd status --watch` redraws in place on a terminal.

/// A frame redrawn in place on the terminal: the cursor goes back to the
/// frame's first line, every line is rewritten and cleared to its end, and
/// whatever the last frame had below is cleared. Lines are cut to the
/// terminal's width and the frame to its height so nothing wraps or
/// scrolls (which would leave the cursor arithmetic wrong).
#[derive(Default)]
pub(super) struct Screen {
    lines: usize,
    size: Option<(u16, u16)>,
}

impl Screen {
    pub(super) fn draw(&mut self, frame: &str) -> std::io::Result<()> {
        use std::io::Write;
        let size = console::Term::stdout().size_checked();
        let (rows, cols) = size.unwrap_or((24, 80));
        let mut out = String::new();
        if self.lines == 0 {
            out.push_str("\x1b[?25l");
        } else if size != self.size {
            // Resized: lines of the last frame may have wrapped; start over.
            out.push_str("\x1b[H\x1b[2J");
        } else {
            out.push_str(&format!("\x1b[{}A\r", self.lines));
        }
        let max_rows = usize::from(rows.saturating_sub(1)).max(1);
        let mut lines: Vec<String> = frame
            .lines()
            .map(|l| console::truncate_str(l, usize::from(cols), "…").into_owned())
            .collect();
        if lines.len() > max_rows {
            lines.truncate(max_rows - 1);
            lines.push(format!(
                "… (the terminal is too small for {} more lines)",
                frame.lines().count() - lines.len()
            ));
        }
        for l in &lines {
            out.push_str(l);
            out.push_str("\x1b[K\n");
        }
        out.push_str("\x1b[J");
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
        self.lines = lines.len();
        self.size = size;
        Ok(())
    }

    /// Leave the last frame on screen and give the cursor back.
    pub(super) fn close(self) -> std::io::Result<()> {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(b"\x1b[?25h")?;
        stdout.flush()
    }
}
