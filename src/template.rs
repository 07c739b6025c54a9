//! Body templates of `format = "template"` sinks: MiniJinja, compiled once when the config
//! is validated (so a broken template is a config error) and again when the sink is built.
//! Templates see only the event, never a secret.
//!
//! A render is bounded: at most [`FUEL`] steps of MiniJinja's engine (a nested loop of
//! 1e5 x 1e5 would otherwise burn a core for hours, past the sink's timeout and SIGTERM)
//! and at most [`MAX_OUTPUT`] bytes of body. A render that hits either fails, and a render
//! failure is for good: the delivery goes dead at once with the reason.
//!
//! Below both `config` and `delivery`: this module imports nothing else of the crate.

use std::io;

use minijinja::Environment;
use serde_json::Value;

/// The steps (MiniJinja instructions) one render may take: some hundred for a typical
/// body, a few ten thousand for one looping over a large checkpoint object; a few
/// milliseconds of work, even unoptimised.
pub const FUEL: u64 = 2_000_000;

/// The largest body a template may render.
pub const MAX_OUTPUT: usize = 8 << 20;

/// A compiled body template.
pub struct Template {
    env: Environment<'static>,
}

/// A template that does not compile or render; the message is MiniJinja's, with line
/// information, or names the bound that was hit.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Engine(#[from] minijinja::Error),
    #[error("the template ran out of its {FUEL} steps (a loop too large?)")]
    OutOfFuel,
    #[error("the rendered body is larger than {MAX_OUTPUT} bytes")]
    TooLarge,
}

/// Compile a body template.
pub fn compile_template(source: &str) -> Result<Template, TemplateError> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.add_template_owned("body", source.to_string())?;
    Ok(Template { env })
}

impl Template {
    /// Render the body from `context` (the event's standard JSON).
    pub fn render(&self, context: &Value) -> Result<String, TemplateError> {
        let t = self.env.get_template("body")?;
        let mut out = Capped {
            buf: Vec::new(),
            over: false,
        };
        match t.render_captured_to(minijinja::value::Serde(context), &mut out) {
            Ok(_) => Ok(String::from_utf8(out.buf).expect("MiniJinja writes UTF-8")),
            Err(_) if out.over => Err(TemplateError::TooLarge),
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(TemplateError::OutOfFuel),
            Err(e) => Err(e.into()),
        }
    }
}

impl Template {
    /// Render `sample` and report a name the template uses that does not exist (a filter,
    /// test, function or method): such a template fails every render, whatever the event.
    /// Other failures may depend on the event, so they are not reported here.
    pub fn unknown_name(&self, sample: &Value) -> Option<String> {
        use minijinja::ErrorKind::{UnknownFilter, UnknownFunction, UnknownMethod, UnknownTest};
        match self.render(sample) {
            Err(TemplateError::Engine(e))
                if matches!(
                    e.kind(),
                    UnknownFilter | UnknownTest | UnknownFunction | UnknownMethod
                ) =>
            {
                Some(e.to_string())
            }
            _ => None,
        }
    }
}

/// A buffer that refuses to grow past [`MAX_OUTPUT`], which stops the render.
struct Capped {
    buf: Vec<u8>,
    over: bool,
}

impl io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.buf.len() + b.len() > MAX_OUTPUT {
            self.over = true;
            return Err(io::Error::other("the rendered body is too large"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_huge_nested_loop_runs_out_of_fuel_quickly() {
        let t = compile_template(
            "{% for i in range(100000) %}{% for j in range(100000) %}{{ i * j }}{% endfor %}{% endfor %}",
        )
        .unwrap();
        let start = Instant::now();
        let e = t.render(&serde_json::json!({})).unwrap_err();
        assert!(matches!(e, TemplateError::OutOfFuel), "{e}");
        assert!(e.to_string().contains("steps"), "{e}");
        // Loosely: it used to run for hours; a sink's timeout is seconds.
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_body_over_the_cap_fails_and_one_below_renders() {
        let t =
            compile_template("{% for i in range(200) %}{{ 'x' * 100000 }}{% endfor %}").unwrap();
        let e = t.render(&serde_json::json!({})).unwrap_err();
        assert!(matches!(e, TemplateError::TooLarge), "{e}");
        let t = compile_template("{{ data.name }}: {% for i in range(3) %}{{ i }}{% endfor %}")
            .unwrap();
        assert_eq!(
            t.render(&serde_json::json!({"data": {"name": "n"}}))
                .unwrap(),
            "n: 012"
        );
    }

    #[test]
    fn a_render_error_names_its_cause() {
        let t = compile_template("{{ data.x.y.z }}").unwrap();
        let e = t.render(&serde_json::json!({"data": {}})).unwrap_err();
        assert!(matches!(e, TemplateError::Engine(_)), "{e}");
        assert!(e.to_string().contains("undefined"), "{e}");
    }
}
