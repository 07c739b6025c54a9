//! Body templates of `format = "template"` sinks: MiniJinja, compiled once when the config
//! is validated (so a broken template is a config error) and again when the sink is built.
//! Templates see only the event, never a secret.
//!
//! Below both `config` and `delivery`: this module imports nothing else of the crate.

use minijinja::Environment;
use serde_json::Value;

/// A compiled body template.
pub struct Template {
    env: Environment<'static>,
}

/// A template that does not compile or render; the message is MiniJinja's, with line
/// information.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(#[from] minijinja::Error);

/// Compile a body template.
pub fn compile_template(source: &str) -> Result<Template, TemplateError> {
    let mut env = Environment::new();
    env.add_template_owned("body", source.to_string())?;
    Ok(Template { env })
}

impl Template {
    /// Render the body from `context` (the event's standard JSON).
    pub fn render(&self, context: &Value) -> Result<String, TemplateError> {
        Ok(self
            .env
            .get_template("body")
            .and_then(|t| t.render(minijinja::value::Serde(context)))?)
    }
}
