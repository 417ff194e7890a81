//! Stop strings over streamed text: ends a sequence at the first occurrence of any stop
//! string, even one that straddles tokens, and never lets a stream show text that may
//! turn out to be the start of a stop string.

/// Streamed text checked against stop strings.
#[derive(Clone, Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    /// Longest stop string, in bytes.
    longest: usize,
    /// Text produced so far that has not been cut.
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    /// A stop string was found; nothing more is accepted.
    stopped: bool,
}

impl StopText {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        StopText {
            longest: stops.iter().map(String::len).max().unwrap_or(0),
            stops,
            ..Default::default()
        }
    }

    /// Whether a stop string ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds `delta` and returns the text now safe to show, and whether a stop string was
    /// completed (the returned text then ends just before it).
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        if self.stops.is_empty() {
            return (delta.to_owned(), false);
        }
        // A new match must end inside `delta`, so it starts at most `longest - 1` bytes
        // before it.
        let mut from = self
            .text
            .len()
            .saturating_sub(self.longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(delta);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.stopped = true;
            let out = self.text[self.emitted..at].to_owned();
            self.text.truncate(at);
            self.emitted = at;
            return (out, true);
        }
        // Hold back the longest tail that begins some stop string.
        let held = (1..self.longest.min(self.text.len() - self.emitted + 1))
            .rev()
            .find(|&n| {
                let tail_start = self.text.len() - n;
                self.text.is_char_boundary(tail_start)
                    && self.stops.iter().any(|s| {
                        s.as_bytes()
                            .starts_with(&self.text.as_bytes()[tail_start..])
                    })
            })
            .unwrap_or(0);
        let upto = self.text.len() - held;
        let out = self.text[self.emitted..upto].to_owned();
        self.emitted = upto;
        (out, false)
    }

    /// The text held back at the end of the sequence (it did not become a stop string).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let out = self.text[self.emitted..].to_owned();
        self.emitted = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`, returns (everything shown, whether stopped).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool, Vec<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopText::new(&stops);
        let mut shown = String::new();
        let mut deltas = Vec::new();
        for p in pieces {
            let (d, stop) = m.push(p);
            shown.push_str(&d);
            deltas.push(d);
            if stop {
                return (shown, true, deltas);
            }
        }
        shown.push_str(&m.finish());
        (shown, false, deltas)
    }

    #[test]
    fn stop_inside_one_piece() {
        assert_eq!(run(&["END"], &["abc", "xENDy", "z"]).0, "abcx");
        assert!(run(&["END"], &["abc", "xENDy"]).1);
    }

    #[test]
    fn stop_straddling_pieces_is_never_shown() {
        let (shown, stopped, deltas) =
            run(&["</answer>"], &["the ", "result</", "ans", "wer> more"]);
        assert!(stopped);
        assert_eq!(shown, "the result");
        // The partial "</" and "</ans" were withheld, not shown and then taken back.
        assert!(deltas.iter().all(|d| !d.contains('<')));
    }

    #[test]
    fn held_text_is_released_when_it_is_not_a_stop() {
        let (shown, stopped, deltas) = run(&["STOP"], &["a", "ST", "OX", "b"]);
        assert!(!stopped);
        assert_eq!(shown, "aSTOXb");
        assert_eq!(deltas[1], "");
        let (shown, stopped, _) = run(&["STOP"], &["a", "STO"]);
        assert!(!stopped);
        assert_eq!(shown, "aSTO");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_unicode_is_respected() {
        assert_eq!(run(&["bb", "ab"], &["xa", "bb"]).0, "x");
        assert_eq!(run(&["é!"], &["café", "!", "x"]).0, "caf");
        assert_eq!(run(&["日本"], &["今日は日", "本です"]).0, "今日は");
        assert_eq!(run(&[], &["a", "b"]).0, "ab");
        assert_eq!(run(&[""], &["a", "b"]).0, "ab");
    }
}
