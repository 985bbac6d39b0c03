//! The CRI log file format (`<RFC 3339 time> <stream> <tags> <message>`), as the
//! kubelet's `parseCRILog` reads it: used for `pods/log` streaming and for a
//! termination message that falls back to the log. A leaf module.

use jiff::Timestamp;

/// Which stream a log record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One record of a CRI log file: `<RFC 3339 time> <stream> <tags> <message>`,
/// e.g. `2016-10-06T00:17:09.669794202Z stdout F text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriRecord<'a> {
    /// The time as written (containerd writes 9 fraction digits).
    pub time_text: &'a str,
    pub time: Timestamp,
    pub stream: LogStream,
    /// Tag `P`: the line continues in the next record.
    pub partial: bool,
    /// The text: with its line end for a full record, without for a partial one.
    pub message: &'a [u8],
}

/// Parse one line of a CRI log file (with or without its `\n`); `None` when
/// it is not in CRI format (as the kubelet's `parseCRILog`).
pub fn parse_cri_record(line: &[u8]) -> Option<CriRecord<'_>> {
    fn field(s: &[u8]) -> Option<(&[u8], &[u8])> {
        let i = s.iter().position(|&b| b == b' ')?;
        Some((&s[..i], &s[i + 1..]))
    }
    let (time, rest) = field(line)?;
    let time_text = std::str::from_utf8(time).ok()?;
    let time = time_text.parse::<Timestamp>().ok()?;
    let (stream, rest) = field(rest)?;
    let stream = match stream {
        b"stdout" => LogStream::Stdout,
        b"stderr" => LogStream::Stderr,
        _ => return None,
    };
    let (tags, mut message) = field(rest)?;
    // Tags are `:`-separated; only the first (P or F) means anything today.
    let partial = tags.split(|&b| b == b':').next() == Some(b"P".as_slice());
    if partial && message.last() == Some(&b'\n') {
        message = &message[..message.len() - 1];
    }
    Some(CriRecord {
        time_text,
        time,
        stream,
        partial,
        message,
    })
}
