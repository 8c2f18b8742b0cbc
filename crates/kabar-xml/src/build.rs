//! Small helpers for building and editing trees without string pasting.

use minidom::Element;
use rxml::{NcName, Namespace};

/// An empty element `name` in namespace `ns`.
pub fn elem(name: &str, ns: &str) -> Element {
    Element::bare(name, ns)
}

pub trait ElementExt: Sized {
    /// Sets an unnamespaced attribute. Names are literals in this code base; an invalid name
    /// (impossible for the literals used) is ignored rather than panicking.
    fn set_attr_str(&mut self, name: &str, value: impl Into<String>);
    fn remove_attr_str(&mut self, name: &str) -> Option<String>;
    /// Sets `xml:lang`.
    fn set_xml_lang(&mut self, lang: &str);
    fn with_attr(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_attr_str(name, value);
        self
    }
    fn with_child(self, child: Element) -> Self;
    fn with_text(self, text: impl Into<String>) -> Self;
}

impl ElementExt for Element {
    fn set_attr_str(&mut self, name: &str, value: impl Into<String>) {
        if let Ok(name) = NcName::try_from(name) {
            self.attrs_mut().insert(Namespace::none().clone(), name, value.into());
        }
    }

    fn set_xml_lang(&mut self, lang: &str) {
        if let Ok(name) = NcName::try_from("lang") {
            self.attrs_mut().insert(Namespace::xml().clone(), name, lang.to_string());
        }
    }

    fn remove_attr_str(&mut self, name: &str) -> Option<String> {
        let name = NcName::try_from(name).ok()?;
        self.attrs_mut().remove(Namespace::none(), &name)
    }

    fn with_child(mut self, child: Element) -> Self {
        self.append_child(child);
        self
    }

    fn with_text(mut self, text: impl Into<String>) -> Self {
        self.append_text(text.into());
        self
    }
}
