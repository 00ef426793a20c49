//! The FHIR type model as FHIRPath needs it (children of a type, base types, resource and primitive types), read from the core definitions; it must not evaluate anything.

use fhirwall_definitions::{Definitions, TypeKind};

/// The child of a type as FHIRPath sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelChild<'m> {
    /// FHIR type codes, or backbone paths such as `Patient.contact`.
    pub types: &'m [String],
    pub is_choice: bool,
}

/// The core definitions' type model, for the FHIRPath engine.
#[derive(Debug, Clone, Copy)]
pub struct DefinitionsModel {
    defs: &'static Definitions,
}

impl DefinitionsModel {
    pub fn new(defs: &'static Definitions) -> Self {
        DefinitionsModel { defs }
    }

    /// The child `name` (without `[x]`) of `parent_type`, looked up through base types so
    /// that `Patient.id` and `Quantity.extension` resolve.
    pub fn child(&self, parent_type: &str, name: &str) -> Option<ModelChild<'static>> {
        let mut current = Some(parent_type);
        let mut steps = 0;
        while let Some(type_name) = current {
            let info = self.defs.type_info(type_name)?;
            if let Some(child) = info.child(name) {
                return Some(ModelChild {
                    types: &child.types,
                    is_choice: child.is_choice,
                });
            }
            steps += 1;
            if steps > 16 {
                return None;
            }
            current = info.base.as_deref();
        }
        None
    }

    /// The type `ty` derives from (`DomainResource` for `Patient`, `BackboneElement` for
    /// `Patient.contact`).
    pub fn base_type(&self, ty: &str) -> Option<&'static str> {
        self.defs
            .type_info(ty)
            .and_then(|info| info.base.as_deref())
    }

    pub fn is_resource_type(&self, name: &str) -> bool {
        self.defs.is_resource_type(name)
    }

    pub fn is_primitive(&self, ty: &str) -> bool {
        self.defs
            .type_info(ty)
            .is_some_and(|info| info.kind == TypeKind::Primitive)
    }
}

impl fhirwall_fhirpath::Model for DefinitionsModel {
    fn child(&self, parent_type: &str, name: &str) -> Option<fhirwall_fhirpath::Child<'_>> {
        DefinitionsModel::child(self, parent_type, name).map(|child| fhirwall_fhirpath::Child {
            types: child.types,
            is_choice: child.is_choice,
        })
    }

    fn base_type(&self, type_name: &str) -> Option<&str> {
        DefinitionsModel::base_type(self, type_name)
    }

    fn is_resource_type(&self, name: &str) -> bool {
        DefinitionsModel::is_resource_type(self, name)
    }

    fn is_primitive(&self, type_name: &str) -> bool {
        DefinitionsModel::is_primitive(self, type_name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn model_reads_children_through_base_types() {
        let model = DefinitionsModel::new(Definitions::core());
        let name = model.child("Patient", "name").unwrap();
        assert_eq!(name.types, ["HumanName"]);
        assert!(!name.is_choice);
        let deceased = model.child("Patient", "deceased").unwrap();
        assert!(deceased.is_choice);
        assert_eq!(
            model.child("Patient.contact", "name").unwrap().types,
            ["HumanName"]
        );
        assert!(model.child("Patient", "id").is_some());
        assert!(model.child("Patient", "nope").is_none());
        assert_eq!(model.base_type("Patient"), Some("DomainResource"));
        assert!(model.is_resource_type("Bundle"));
        assert!(model.is_primitive("dateTime"));
        assert!(!model.is_primitive("Quantity"));
    }
}
