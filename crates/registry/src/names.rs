//! Names and records as the registry accepts them: the checks every client message passes
//! before anything is stored (each refusal names the field and the reason), data keys with
//! their slot, and one shared copy of each repeated name (interning).
//!
//! Owns what a valid name, address and attribute are. Must not store or push anything.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use limits::{
    REGISTRY_ADDRESS_BYTES_MAX, REGISTRY_ATTRIBUTE_BYTES_MAX, REGISTRY_ATTRIBUTES_MAX,
    REGISTRY_NAME_BYTES_MAX,
};

use crate::proto;

/// A refused request: the field at fault (`register.record.attributes[2].key`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Refusal {
    pub field: String,
    pub reason: String,
}

impl Refusal {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Refusal {
        Refusal {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Where records are published: tenant, group and data id, each an interned name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataKey {
    pub instance_id: Arc<str>,
    pub group: Arc<str>,
    pub data_id: Arc<str>,
}

impl DataKey {
    /// A key from names already checked.
    pub fn new(instance_id: &str, group: &str, data_id: &str) -> DataKey {
        DataKey {
            instance_id: instance_id.into(),
            group: group.into(),
            data_id: data_id.into(),
        }
    }

    /// The key's slot among `slots`: CRC-32C of `instance_id`, NUL, `group`, NUL, `data_id`,
    /// modulo `slots` (docs/registry.md). Stable across versions: the slot table depends on it.
    pub fn slot(&self, slots: usize) -> usize {
        let mut crc = crc32c::crc32c(self.instance_id.as_bytes());
        crc = crc32c::crc32c_append(crc, &[0]);
        crc = crc32c::crc32c_append(crc, self.group.as_bytes());
        crc = crc32c::crc32c_append(crc, &[0]);
        crc = crc32c::crc32c_append(crc, self.data_id.as_bytes());
        crc as usize % slots
    }

    pub fn to_proto(&self) -> proto::DataKey {
        proto::DataKey {
            instance_id: self.instance_id.to_string(),
            group: self.group.to_string(),
            data_id: self.data_id.to_string(),
        }
    }
}

impl std::fmt::Display for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.instance_id, self.group, self.data_id)
    }
}

/// One shared copy of each name in use (data key parts, zones, client ids, attribute keys):
/// ten million publishers name a few thousand keys and zones. Names no longer held elsewhere
/// are dropped by [`Interner::sweep`].
#[derive(Debug, Default)]
pub struct Interner {
    names: Mutex<HashSet<Arc<str>>>,
}

impl Interner {
    pub fn get(&self, name: &str) -> Arc<str> {
        let mut names = self.names.lock().expect("never poisoned");
        if let Some(held) = names.get(name) {
            return Arc::clone(held);
        }
        let held: Arc<str> = Arc::from(name);
        names.insert(Arc::clone(&held));
        held
    }

    /// Drops the names nobody else holds; how many are left.
    pub fn sweep(&self) -> usize {
        let mut names = self.names.lock().expect("never poisoned");
        names.retain(|name| Arc::strong_count(name) > 1);
        names.len()
    }
}

/// A name: 1 to `REGISTRY_NAME_BYTES_MAX` bytes of ASCII letters, digits and `-_.:@/`.
pub fn name<'a>(field: &str, value: &'a str) -> Result<&'a str, Refusal> {
    if value.is_empty() {
        return Err(Refusal::new(field, "must not be empty"));
    }
    if value.len() > REGISTRY_NAME_BYTES_MAX {
        return Err(Refusal::new(
            field,
            format!(
                "is {} bytes, more than {REGISTRY_NAME_BYTES_MAX}",
                value.len()
            ),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:@/".contains(*c)))
    {
        return Err(Refusal::new(
            field,
            format!("holds {bad:?}; a name is ASCII letters, digits and -_.:@/"),
        ));
    }
    Ok(value)
}

/// A config center key (as `docs/config-center.md` defines it): 1 to `REGISTRY_NAME_BYTES_MAX`
/// bytes of ASCII letters, digits and `._-:/[]`.
pub fn config_key<'a>(field: &str, value: &'a str) -> Result<&'a str, Refusal> {
    if value.is_empty() || value.len() > REGISTRY_NAME_BYTES_MAX {
        return Err(Refusal::new(
            field,
            format!("must be 1 to {REGISTRY_NAME_BYTES_MAX} bytes"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-:/[]".contains(*c)))
    {
        return Err(Refusal::new(
            field,
            format!("holds {bad:?}; a config key is ASCII letters, digits and ._-:/[]"),
        ));
    }
    Ok(value)
}

/// Text of 0 to `max` bytes with no control characters.
fn text<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, Refusal> {
    if value.len() > max {
        return Err(Refusal::new(
            field,
            format!("is {} bytes, more than {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Refusal::new(field, "holds a control character"));
    }
    Ok(value)
}

/// A data key from the wire, checked and interned.
pub fn data_key(
    field: &str,
    key: Option<&proto::DataKey>,
    interner: &Interner,
) -> Result<DataKey, Refusal> {
    let key = key.ok_or_else(|| Refusal::new(field, "is missing"))?;
    let part = |part: &str, value: &str| {
        name(&format!("{field}.{part}"), value).map(|value| interner.get(value))
    };
    Ok(DataKey {
        instance_id: part("instance_id", &key.instance_id)?,
        group: part("group", &key.group)?,
        data_id: part("data_id", &key.data_id)?,
    })
}

/// Checks a record from the wire: a non-empty address, at most `REGISTRY_ATTRIBUTES_MAX`
/// attributes with named, distinct keys.
pub fn record(field: &str, record: Option<&proto::Record>) -> Result<(), Refusal> {
    let record = record.ok_or_else(|| Refusal::new(field, "is missing"))?;
    let address = text(
        &format!("{field}.address"),
        &record.address,
        REGISTRY_ADDRESS_BYTES_MAX,
    )?;
    if address.is_empty() {
        return Err(Refusal::new(
            format!("{field}.address"),
            "must not be empty",
        ));
    }
    if record.attributes.len() > REGISTRY_ATTRIBUTES_MAX {
        return Err(Refusal::new(
            format!("{field}.attributes"),
            format!(
                "has {} attributes, more than {REGISTRY_ATTRIBUTES_MAX}",
                record.attributes.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (at, attribute) in record.attributes.iter().enumerate() {
        let key = format!("{field}.attributes[{at}].key");
        name(&key, &attribute.key)?;
        if attribute.key.len() > REGISTRY_ATTRIBUTE_BYTES_MAX {
            return Err(Refusal::new(key, "is too long"));
        }
        if !seen.insert(attribute.key.as_str()) {
            return Err(Refusal::new(key, "repeats an earlier attribute's key"));
        }
        text(
            &format!("{field}.attributes[{at}].value"),
            &attribute.value,
            REGISTRY_ATTRIBUTE_BYTES_MAX,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_refused_naming_the_field_and_the_reason() {
        assert!(name("hello.zone", "eu-1a").is_ok());
        assert_eq!(name("x", "").unwrap_err().reason, "must not be empty");
        let long = "a".repeat(REGISTRY_NAME_BYTES_MAX + 1);
        assert!(
            name("x", &long)
                .unwrap_err()
                .reason
                .contains("more than 128")
        );
        let refusal = name("register.key.data_id", "pay api").unwrap_err();
        assert_eq!(refusal.field, "register.key.data_id");
        assert!(refusal.reason.contains("' '"), "{refusal}");
        assert!(name("x", "naïve").is_err());
    }

    #[test]
    fn records_are_checked_attribute_by_attribute() {
        let attribute = |key: &str, value: &str| proto::Attribute {
            key: key.into(),
            value: value.into(),
        };
        let mut good = proto::Record {
            address: "10.0.0.1:8080".into(),
            attributes: vec![attribute("weight", "100"), attribute("proto", "grpc")],
        };
        assert!(record("r", Some(&good)).is_ok());
        good.attributes.push(attribute("weight", "1"));
        let refusal = record("r", Some(&good)).unwrap_err();
        assert_eq!(refusal.field, "r.attributes[2].key");
        good.attributes.pop();
        good.attributes[1].value = "a\nb".into();
        assert_eq!(
            record("r", Some(&good)).unwrap_err().field,
            "r.attributes[1].value"
        );
        good.attributes.clear();
        good.address.clear();
        assert_eq!(record("r", Some(&good)).unwrap_err().field, "r.address");
        assert_eq!(record("r", None).unwrap_err().reason, "is missing");
    }

    #[test]
    fn interned_names_are_shared_and_swept_when_unused() {
        let interner = Interner::default();
        let a = interner.get("zone-a");
        let b = interner.get("zone-a");
        assert!(Arc::ptr_eq(&a, &b));
        drop(interner.get("gone"));
        assert_eq!(interner.sweep(), 1);
    }

    #[test]
    fn a_keys_slot_is_a_stable_function_of_its_names() {
        let key = DataKey::new("t", "g", "pay.api");
        assert_eq!(key.slot(256), key.slot(256));
        // The documented function: CRC-32C of the joined names, modulo the slots.
        let joined = crc32c::crc32c(b"t\0g\0d") as usize;
        assert_eq!(DataKey::new("t", "g", "d").slot(256), joined % 256);
        assert_eq!(DataKey::new("t", "g", "d").slot(7), joined % 7);
    }
}
