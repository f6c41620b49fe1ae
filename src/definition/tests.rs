use std::{collections::BTreeMap, sync::Arc};

use serde_json::{Value, json};

use super::{
    data::{build, holds, lookup},
    *,
};
use crate::{
    engine::RunKind,
    model::{ModelProvider, OfflineModel, OpenAiConfig, OpenAiModel},
    registry::DefinitionCompiler,
    worker::{WorkerHub, WorkerSettings},
};

fn def(steps: Value) -> WorkflowDef {
    serde_json::from_value(json!({ "id": "wf", "steps": steps })).expect("a definition")
}

fn error_of(steps: Value) -> String {
    validate(&def(steps)).expect_err("invalid").to_string()
}

#[test]
fn the_json_shapes_of_the_issue_read_as_nodes() {
    let d = def(json!([
        {"step": {"id": "resize", "task": "resize-image"}},
        {"foreach": {"concurrency": 4, "node": {"step": {"id": "each", "task": "t"}}}},
        {"dountil": {"node": {"step": {"id": "poll", "task": "t"}}, "condition": {"path": "done", "equals": true}}},
    ]));
    assert_eq!(
        d.steps[0],
        Node::Step(StepNode { id: "resize".into(), task: "resize-image".into(), ..Default::default() })
    );
    let Node::Foreach(f) = &d.steps[1] else { panic!("a foreach") };
    assert_eq!(f.concurrency, 4);
    validate(&d).expect("valid");
    // What the store keeps reads back as the same definition.
    let stored = serde_json::to_value(&d).expect("json");
    assert_eq!(serde_json::from_value::<WorkflowDef>(stored).expect("reads back"), d);
}

#[test]
fn a_condition_test_sits_next_to_its_path_as_in_proto_json() {
    let c: Condition = serde_json::from_value(json!({"path": "n", "greaterThan": 2})).expect("a condition");
    assert_eq!(c.test, Some(Test::GreaterThan(2.0)));
    assert_eq!(serde_json::to_value(&c).expect("json"), json!({"path": "n", "greaterThan": 2.0}));
    let null: Condition = serde_json::from_value(json!({"path": "n", "equals": null})).expect("equals null");
    assert_eq!(null.test, Some(Test::Equals(Value::Null)));
}

#[test]
fn validation_names_the_node_path() {
    assert_eq!(
        error_of(json!([{"step": {"id": "a", "task": "t"}}, {"step": {"id": "b", "task": "t"}},
            {"foreach": {"node": {"step": {"id": "c", "task": ""}}}}])),
        "steps[2].foreach.node.step.task: must not be empty: name the task type a worker serves (Hello.task_types)"
    );
    let inner = error_of(json!([{"foreach": {"node": {"sleep": {"id": "s", "ms": 1}}}}]));
    assert!(
        inner.starts_with("steps[0].foreach.node: only a step node can stand inside foreach, got sleep"),
        "{inner}"
    );
    let parallel =
        error_of(json!([{"parallel": {"nodes": [{"step": {"id": "a", "task": "t"}}, {"map": {"id": "m"}}]}}]));
    assert!(parallel.starts_with("steps[0].parallel.nodes[1]: only a step node"), "{parallel}");
    let dup = error_of(json!([{"step": {"id": "a", "task": "t"}}, {"sleep": {"id": "a", "ms": 1}}]));
    assert_eq!(
        dup,
        "steps[1].sleep.id: 'a' is already the id of steps[0].step; ids must be unique within the workflow"
    );
    let dotted = error_of(json!([{"step": {"id": "a.b", "task": "t"}}]));
    assert!(dotted.starts_with("steps[0].step.id: character '.' is not allowed"), "{dotted}");
    let no_cond = error_of(json!([{"dowhile": {"node": {"step": {"id": "a", "task": "t"}}}}]));
    assert!(no_cond.starts_with("steps[0].dowhile.condition: required"), "{no_cond}");
    let retries = error_of(json!([{"step": {"id": "a", "task": "t", "retries": {"attempts": 101}}}]));
    assert!(retries.starts_with("steps[0].step.retries.attempts: 101 is more than"), "{retries}");
    let path = error_of(json!([{"map": {"id": "m", "fields": {"x": {"path": "a..b"}}}}]));
    assert!(path.starts_with("steps[0].map.fields.x.path: \"a..b\" has an empty segment"), "{path}");
    let iteration = error_of(
        json!([{"branch": {"cases": [{"when": {"path": "$iteration"}, "node": {"step": {"id": "a", "task": "t"}}}]}}]),
    );
    assert!(iteration.starts_with("steps[0].branch.cases[0].when.path: \"$iteration\""), "{iteration}");
    assert!(error_of(json!([])).starts_with("steps: must not be empty"));
    let schema =
        validate(&WorkflowDef { input_schema: Some(json!({"type": 12})), ..def(json!([{"sleep": {"id": "s"}}])) });
    assert!(schema.expect_err("bad schema").to_string().starts_with("inputSchema: not a valid JSON Schema"));
    let id = validate(&WorkflowDef { id: "a b".into(), ..def(json!([{"sleep": {"id": "s"}}])) });
    assert!(id.expect_err("bad id").to_string().starts_with("id: character ' ' is not allowed"));
}

#[test]
fn paths_reach_into_objects_and_arrays() {
    let data = json!({"order": {"items": [{"sku": "a"}, {"sku": "b"}]}, "name": "héllo"});
    assert_eq!(lookup(&data, "").as_deref(), Some(&data));
    assert_eq!(lookup(&data, ".").as_deref(), Some(&data));
    assert_eq!(lookup(&data, "order.items.1.sku").as_deref(), Some(&json!("b")));
    assert_eq!(lookup(&data, "order.items.length").as_deref(), Some(&json!(2)));
    assert_eq!(lookup(&data, "name.length").as_deref(), Some(&json!(5)));
    assert_eq!(lookup(&data, "order.items.9"), None);
    assert_eq!(lookup(&data, "order.nothing.deeper"), None);
    assert_eq!(lookup(&json!([1, 2, 3]), "length").as_deref(), Some(&json!(3)));
}

#[test]
fn conditions_compare_test_and_combine() {
    let cond = |v: Value| serde_json::from_value::<Condition>(v).expect("a condition");
    let data = json!({"n": 3, "s": "x", "flag": false, "none": null, "list": []});
    assert!(holds(&cond(json!({"path": "n", "equals": 3.0})), &data, None), "numbers compare by value");
    assert!(holds(&cond(json!({"path": "s", "notEquals": "y"})), &data, None));
    assert!(holds(&cond(json!({"path": "missing", "notEquals": "y"})), &data, None));
    assert!(holds(&cond(json!({"path": "n", "greaterThan": 2})), &data, None));
    assert!(!holds(&cond(json!({"path": "n", "lessThan": 3})), &data, None));
    assert!(holds(&cond(json!({"path": "n", "lessOrEqual": 3})), &data, None));
    assert!(!holds(&cond(json!({"path": "s", "greaterThan": 0})), &data, None), "a string is no number");
    assert!(!holds(&cond(json!({"path": "flag"})), &data, None), "false is falsy");
    assert!(holds(&cond(json!({"path": "list"})), &data, None), "an empty array is truthy");
    assert!(!holds(&cond(json!({"path": "none", "exists": true})), &data, None));
    assert!(holds(&cond(json!({"path": "missing", "exists": false})), &data, None));
    assert!(holds(&cond(json!({"path": "flag", "not": true})), &data, None));
    let all = cond(json!({"path": "n", "all": [{"path": "s"}, {"path": "flag"}]}));
    assert!(!holds(&all, &data, None));
    let any = cond(json!({"path": "n", "any": [{"path": "flag"}, {"path": "s"}]}));
    assert!(holds(&any, &data, None));
    let either = cond(json!({"any": [{"path": "flag"}, {"path": "n", "equals": 3}]}));
    assert!(!holds(&either, &json!(0), None) && holds(&either, &data, None), "a combinator tests nothing itself");
    let iteration = cond(json!({"path": "$iteration", "greaterOrEqual": 3}));
    assert!(!holds(&iteration, &data, Some(2)));
    assert!(holds(&iteration, &data, Some(3)));
}

#[test]
fn mappings_build_objects_from_the_data_the_run_input_and_constants() {
    let fields: BTreeMap<String, Source> = serde_json::from_value(json!({
        "url": {"path": "image.url"},
        "user": {"runInput": "user"},
        "size": {"value": 64},
        "all": {"path": ""},
        "gone": {"path": "nothing"},
    }))
    .expect("fields");
    let data = json!({"image": {"url": "u"}});
    let run_input = json!({"user": "ada"});
    assert_eq!(
        build(&fields, &data, &run_input),
        json!({"url": "u", "user": "ada", "size": 64, "all": data, "gone": null})
    );
}

#[tokio::test]
async fn a_definition_compiles_to_a_workflow_of_remote_steps_and_nested_workflows() {
    let compiler = Compiler::new(WorkerHub::new(WorkerSettings::default()), Arc::new(OfflineModel::new()));
    let child = compiler
        .workflow(&WorkflowDef { id: "child".into(), ..def(json!([{"step": {"id": "inner", "task": "t"}}])) }, &|_| {
            None
        })
        .expect("child compiles");
    let d = def(json!([
        {"step": {"id": "a", "task": "t", "input": {"x": {"path": "y"}}, "retries": {"attempts": 2, "delayMs": 10}}},
        {"parallel": {"nodes": [{"step": {"id": "p1", "task": "t"}}, {"step": {"id": "p2", "task": "t"}}]}},
        {"workflow": {"id": "child"}},
        {"map": {"id": "m", "fields": {"n": {"path": "length"}}}},
    ]));
    let resolve = |id: &str| (id == "child").then(|| child.clone());
    let wf = compiler.workflow(&d, &resolve).expect("compiles");
    let ids: Vec<String> = wf.steps().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["a", "p1", "p2", "child", "child.inner", "m"]);
    let missing = compiler.workflow(&d, &|_| None).expect_err("child unknown");
    assert_eq!(missing.path, "steps[2].workflow.id");
    assert!(missing.missing);
}

/// An agent definition compiles to a one-step agent workflow whose tools are the definition's; a named model is
/// taken from the server's provider (here an OpenAI-compatible one, never called), else the server's own.
#[test]
fn an_agent_definition_compiles_to_an_agent_on_the_servers_provider() {
    let server_model: Arc<dyn ModelProvider> =
        Arc::new(OpenAiModel::new(OpenAiConfig::new("http://127.0.0.1:9/v1", "server-default")).expect("client"));
    let compiler = Compiler::new(WorkerHub::new(WorkerSettings::default()), server_model);
    let body = json!({
        "id": "helper",
        "instructions": "Be brief.",
        "model": "named-model",
        "tools": [
            {"name": "lookup", "task": "lookup-task", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
            {"name": "book", "task": "book-task", "requiresApproval": true},
        ],
    });
    let wf = compiler.compile(RunKind::Agent, &body, &|_| None).expect("compiles");
    assert_eq!((&**wf.id(), wf.kind()), ("helper", RunKind::Agent));
    let meta = wf.meta().expect("an agent's meta");
    assert_eq!(meta.model, "named-model");
    let tools: Vec<(&str, bool)> = meta.tools.iter().map(|t| (t.name.as_str(), t.requires_approval)).collect();
    assert_eq!(tools, [("lookup", false), ("book", true)]);
    assert_eq!(meta.tools[1].parameters, json!({"type": "object", "properties": {}}), "unset: any object");

    let unnamed = compiler.compile(RunKind::Agent, &json!({"id": "plain"}), &|_| None).expect("compiles");
    assert_eq!(unnamed.meta().expect("meta").model, "server-default");
    let bad = compiler.compile(RunKind::Agent, &json!({"id": "x", "tools": [{"name": "t"}]}), &|_| None);
    let bad = bad.expect_err("a tool without a task");
    assert_eq!((bad.path.as_str(), bad.missing), ("tools[0].task", false), "{bad:?}");
}
