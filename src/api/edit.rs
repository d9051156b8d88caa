//! Edits of the listener file as a TOML document (comments and order kept): finding
//! the tables the actions change, and setting values in them.

use super::ApiError;
use crate::config::{ListenerKey, LISTENER_PORT, LOAD_BALANCER_ID};
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

/// The `[[key]]` array of `table`, created when absent.
pub(super) fn tables_mut<'t>(
    table: &'t mut Table,
    key: &str,
) -> Result<&'t mut ArrayOfTables, ApiError> {
    table
        .entry(key)
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| {
            ApiError::bad(
                "InvalidParameter",
                format!("the listener file writes {key} in a form the API cannot edit; use [[{key}]] tables"),
            )
        })
}

/// The index of the `[[listeners]]` table of `key`.
pub(super) fn find_listener(listeners: &ArrayOfTables, key: &ListenerKey) -> Option<usize> {
    listeners.iter().position(|t| {
        t.get(LOAD_BALANCER_ID.key).and_then(Item::as_str) == Some(key.load_balancer_id.as_str())
            && t.get(LISTENER_PORT.key).and_then(Item::as_integer)
                == Some(i64::from(key.listener_port))
    })
}

/// The listener table of `key`.
pub(super) fn listener_mut<'d>(
    doc: &'d mut DocumentMut,
    key: &ListenerKey,
) -> Result<&'d mut Table, ApiError> {
    let listeners = tables_mut(doc.as_table_mut(), "listeners")?;
    let i = find_listener(listeners, key).ok_or_else(|| ApiError::listener_not_found(key))?;
    listeners
        .get_mut(i)
        .ok_or_else(|| ApiError::listener_not_found(key))
}

/// Sets `key`, keeping the comment after an old value.
pub(super) fn set(table: &mut Table, key: &str, mut value: toml_edit::Value) {
    if let Some(old) = table.get(key).and_then(Item::as_value) {
        *value.decor_mut() = old.decor().clone();
    }
    table.insert(key, Item::Value(value));
}
