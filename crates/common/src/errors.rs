//! Turning an error and its chain of sources into one line of text.

/// `error`, then each of its sources, joined by `": "` — the one way Meridian prints an error
/// chain (logs, CLI messages, S3 error messages).
pub fn chain(error: &(dyn std::error::Error + '_)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        // Many errors repeat their source's text in their own; print it once.
        if !text.ends_with(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn joins_every_source_once() {
        let e = Layer("cannot fetch", Some(Box::new(Layer("connect", Some(Box::new(Layer("refused", None)))))));
        assert_eq!(chain(&e), "cannot fetch: connect: refused");
        let repeated = Layer("io: refused", Some(Box::new(Layer("refused", None))));
        assert_eq!(chain(&repeated), "io: refused");
    }
}
