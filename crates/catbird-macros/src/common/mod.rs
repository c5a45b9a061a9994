//! The stages that `#[catbird::task]` and `#[catbird::step]` share: option
//! parsing (`parse`), checks (`validate`) and code generation helpers
//! (`expand`).

pub(crate) mod expand;
pub(crate) mod parse;
pub(crate) mod validate;

/// The macro at work, which words the messages of the shared stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `#[catbird::task]`.
    Task,
    /// `#[catbird::step]`.
    Step,
}

impl Kind {
    /// Returns the noun for what the macro defines: "task" or "step".
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Step => "step",
        }
    }

    /// Returns the attribute as users write it.
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            Kind::Task => "#[catbird::task]",
            Kind::Step => "#[catbird::step]",
        }
    }
}
