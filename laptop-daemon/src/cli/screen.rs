//! The frame `devd status --watch` redraws in place on a terminal.

use console::Term;

/// A frame redrawn in place on the terminal through `console::Term`: the
/// cursor goes back up to the frame's first line, every line is cleared
/// and rewritten, and whatever the last frame had below is cleared. Lines
/// are cut to the terminal's width and the frame to its height so nothing
/// wraps or scrolls (which would leave the cursor arithmetic wrong). The
/// frame is written in one go (a buffered `Term`, flushed per frame) so it
/// does not flicker.
pub(super) struct Screen {
    term: Term,
    /// Lines the last frame left on screen (0: nothing drawn yet).
    lines: usize,
    /// The terminal's size when the last frame was drawn.
    size: Option<(u16, u16)>,
}

impl Default for Screen {
    fn default() -> Self {
        Self {
            term: Term::buffered_stdout(),
            lines: 0,
            size: None,
        }
    }
}

impl Screen {
    pub(super) fn draw(&mut self, frame: &str) -> std::io::Result<()> {
        let size = self.term.size_checked();
        let (rows, cols) = size.unwrap_or((24, 80));
        if self.lines == 0 {
            self.term.hide_cursor()?;
        } else if size != self.size {
            // Resized: lines of the last frame may have wrapped; start over.
            self.term.clear_screen()?;
        } else {
            self.term.move_cursor_up(self.lines)?;
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
            self.term.clear_line()?;
            self.term.write_line(l)?;
        }
        self.term.clear_to_end_of_screen()?;
        self.term.flush()?;
        self.lines = lines.len();
        self.size = size;
        Ok(())
    }

    /// Leave the last frame on screen and give the cursor back.
    pub(super) fn close(self) -> std::io::Result<()> {
        self.term.show_cursor()?;
        self.term.flush()
    }
}
