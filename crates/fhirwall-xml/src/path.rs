//! Element paths for error messages and OperationOutcome expressions (`Patient.name[0].given[1]`); it must hold only element names and indexes, never element values.

use std::fmt::Write as _;

/// Names longer than this are cut in rendered paths, so a hostile tag name or JSON key cannot
/// blow up an error message.
const MAX_SEGMENT_CHARS: usize = 64;

/// One step of a path, linked to its parent on the stack so that building a path costs
/// nothing until an error renders it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    name: &'a str,
    index: Option<usize>,
}

impl<'a> Path<'a> {
    /// The path of a document's root resource (`Patient`).
    pub(crate) fn root(name: &'a str) -> Self {
        Path {
            parent: None,
            name,
            index: None,
        }
    }

    /// A child element; `index` is its position among its repetitions for repeating elements.
    pub(crate) fn child(&'a self, name: &'a str, index: Option<usize>) -> Path<'a> {
        Path {
            parent: Some(self),
            name,
            index,
        }
    }

    /// The FHIRPath-like text of the path.
    pub(crate) fn render(&self) -> String {
        let mut segments = Vec::new();
        let mut current = Some(self);
        while let Some(segment) = current {
            segments.push(segment);
            current = segment.parent;
        }
        let mut out = String::new();
        for (position, segment) in segments.iter().rev().enumerate() {
            if position > 0 {
                out.push('.');
            }
            out.push_str(truncated(segment.name));
            if let Some(index) = segment.index {
                // Writing to a String cannot fail.
                let _ = write!(out, "[{index}]");
            }
        }
        out
    }
}

/// `name` cut to at most [`MAX_SEGMENT_CHARS`] characters.
pub(crate) fn truncated(name: &str) -> &str {
    match name.char_indices().nth(MAX_SEGMENT_CHARS) {
        Some((end, _)) => name.get(..end).unwrap_or(name),
        None => name,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn renders_names_and_indexes() {
        let root = Path::root("Patient");
        let name = root.child("name", Some(0));
        let given = name.child("given", Some(1));
        assert_eq!(given.render(), "Patient.name[0].given[1]");
        assert_eq!(root.render(), "Patient");
        let long = "x".repeat(500);
        let unknown = root.child(&long, None);
        assert_eq!(unknown.render().len(), "Patient.".len() + MAX_SEGMENT_CHARS);
    }
}
