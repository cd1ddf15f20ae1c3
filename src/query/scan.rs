//! The cursor both hand-written query parsers (TraceQL and LogQL) move through their text
//! with: what is left, spaces skipped, a token taken if it comes next.

/// A parser's position in its text; the provided methods move it.
pub trait Scan {
    fn text(&self) -> &str;
    fn position(&self) -> usize;
    fn set_position(&mut self, position: usize);

    /// The text not read yet.
    fn rest(&self) -> &str {
        &self.text()[self.position()..]
    }

    fn skip_space(&mut self) {
        let skipped = self.rest().len() - self.rest().trim_start().len();
        self.set_position(self.position() + skipped);
    }

    /// Consume `token` (after spaces) if it comes next.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.set_position(self.position() + token.len());
            true
        } else {
            false
        }
    }
}
