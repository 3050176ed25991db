//! Fixture: a 1.1 log editor that writes a label into the record and then traps,
//! so the host must fall back to its own redaction of the half-edited record.
use sluice_policy_sdk::editor::exports::sluice::policy::editor::Guest as Editor;
use sluice_policy_sdk::editor::exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice_policy_sdk::editor::sluice::policy::context::Usage;
use sluice_policy_sdk::editor::sluice::policy::types::Label;

struct BadEditor;
impl Lifecycle for BadEditor {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
}
impl Editor for BadEditor {
    fn edit(rec: &Usage) -> bool {
        rec.set_labels(&[Label {
            name: "leak".into(),
            value: "half-edited".into(),
        }]);
        unreachable!("fixture editor trap")
    }
}
sluice_policy_sdk::editor::export_editor!(BadEditor);
