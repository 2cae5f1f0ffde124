//! Log output: tracing-subscriber's text or JSON formatter, filtered by
//! `RUST_LOG` (default `info`, quiet transport crates); colour only on a terminal.
use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str = "info,h2=warn,tower=warn,sled=warn,hyper=warn";

/// Colour codes only for a person at a terminal, and never with `NO_COLOR`
/// set (<https://no-color.org>): a file or a pipe gets plain text.
#[must_use]
pub fn colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// A subscriber writing plain `format` lines (no colour codes) to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    build(format, filter, writer, false)
}

fn build<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().finish()),
    }
}

/// Installs the process-wide subscriber (the binaries call this once).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into());
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing::subscriber::set_global_default(build(format, filter, std::io::stderr, ansi));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_line(format: LogFormat) -> String {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = subscriber(format, EnvFilter::new("info"), move || w.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(peer = "child-1", seq = 7, "link up");
        });
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn b06_json_log_format_writes_one_json_object_per_line_with_fields() {
        let out = log_line(LogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
        assert_eq!(v["fields"]["message"], "link up");
        assert_eq!(v["fields"]["peer"], "child-1");
        assert_eq!(v["fields"]["seq"], 7);
        assert_eq!(v["level"], "INFO");
        let text = log_line(LogFormat::Text);
        assert!(
            text.contains("link up") && text.contains("child-1"),
            "{text}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
    }

    #[test]
    fn logs_to_a_file_or_pipe_carry_no_colour_codes_and_no_color_turns_colour_off() {
        let text = log_line(LogFormat::Text);
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(colour(true, None));
        assert!(!colour(false, None), "a pipe or file: no colour");
        assert!(!colour(true, Some(std::ffi::OsStr::new("1"))), "NO_COLOR");
        assert!(
            colour(true, Some(std::ffi::OsStr::new(""))),
            "an empty NO_COLOR does not count"
        );
    }
}
