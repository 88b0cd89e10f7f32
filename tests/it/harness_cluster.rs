//! The real control plane: generated CRDs apply, RBAC tells users apart,
//! the controller manager runs, and CRD validation refuses bad objects.

use airlock_operator::crd::{ApprovalPolicy, ApprovalRequest};
use airlock_tests::cluster::{ADMIN, Cluster, OUTSIDER, REQUESTER_1, REQUESTERS_GROUP, apply};
use airlock_tests::wait_for;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;

const NS: &str = "team-a";

fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_apply_and_rbac_tells_users_apart() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.client(ADMIN).await?;
    cluster.install_crds().await?;
    cluster.namespace(NS).await?;
    // The controller manager is running: it creates the namespace's default ServiceAccount.
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), NS);
    wait_for(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || {
            let accounts = accounts.clone();
            async move { Ok(accounts.get_opt("default").await?) }
        },
    )
    .await?;

    // Requesters may read policies in the namespace; nobody else is granted anything.
    let rbac = [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "policy-reader", "namespace": NS},
               "rules": [{"apiGroups": ["mcp.airlock.dev"], "resources": ["approvalpolicies"], "verbs": ["get", "list"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "requesters-read-policies", "namespace": NS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "policy-reader"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": REQUESTERS_GROUP}]}),
    ];
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(admin.clone(), NS);
    roles
        .patch("policy-reader", &apply(), &Patch::Apply(&rbac[0]))
        .await?;
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(admin.clone(), NS);
    bindings
        .patch(
            "requesters-read-policies",
            &apply(),
            &Patch::Apply(&rbac[1]),
        )
        .await?;

    let policy: ApprovalPolicy = serde_yaml::from_str(&format!(
        r#"
apiVersion: mcp.airlock.dev/v1alpha1
kind: ApprovalPolicy
metadata: {{name: model-ops, namespace: {NS}}}
spec:
  servers: {{matchLabels: {{team: ml}}}}
  defaultAction: Deny
  rules:
  - name: deploy-to-prod
    match:
      tools: [deploy_model]
      arguments: [{{pointer: /environment, in: [prod, production]}}]
    action: RequireApproval
    approval: {{approvers: {{groups: [leads]}}, grant: {{window: 10m}}}}
"#
    ))?;
    let admin_policies: Api<ApprovalPolicy> = Api::namespaced(admin.clone(), NS);
    admin_policies
        .create(&PostParams::default(), &policy)
        .await?;

    let as_requester: Api<ApprovalPolicy> = Api::namespaced(cluster.client(REQUESTER_1).await?, NS);
    let read_back = as_requester.get("model-ops").await?;
    assert_eq!(read_back.spec, policy.spec);

    let as_outsider: Api<ApprovalPolicy> = Api::namespaced(cluster.client(OUTSIDER).await?, NS);
    let refused = as_outsider.get("model-ops").await.unwrap_err();
    assert_eq!(status_code(&refused), Some(403), "{refused}");

    // The same through kubectl.
    let ok = cluster.kubectl(
        REQUESTER_1,
        &["get", "approvalpolicies", "-n", NS, "-o", "name"],
    )?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "approvalpolicy.mcp.airlock.dev/model-ops"
    );
    let denied = cluster.kubectl(OUTSIDER, &["get", "approvalpolicies", "-n", NS])?;
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Forbidden"));

    // The schema refuses an unknown action, naming the field.
    let mut bad = serde_json::to_value(&policy)?;
    bad["metadata"]["name"] = json!("bad");
    bad["spec"]["defaultAction"] = json!("Block");
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        admin.clone(),
        NS,
        &kube::api::ApiResource::erase::<ApprovalPolicy>(&()),
    );
    let refused = raw
        .create(&PostParams::default(), &serde_json::from_value(bad)?)
        .await
        .unwrap_err();
    assert_eq!(status_code(&refused), Some(422), "{refused}");
    assert!(
        refused.to_string().contains("spec.defaultAction"),
        "{refused}"
    );

    // An ApprovalRequest's spec cannot change after creation (CEL self == oldSelf).
    let requests: Api<ApprovalRequest> = Api::namespaced(admin.clone(), NS);
    let request: ApprovalRequest = serde_json::from_value(json!({
        "apiVersion": "mcp.airlock.dev/v1alpha1", "kind": "ApprovalRequest",
        "metadata": {"name": "req-1", "namespace": NS},
        "spec": {
            "server": "team-a/model-server",
            "requester": {"tid": "t", "oid": "o", "name": "Ada"},
            "call": {"method": "tools/call", "target": "deploy_model", "argumentsDigest": "sha256:00"},
            "requirements": [{"rule": "team-a/model-ops/deploy-to-prod", "policyVersion": "1",
                              "approverGroups": ["leads"], "minApprovals": 1}],
            "summary": "Ada wants to deploy_model",
            "requestedAt": "2029-12-31T23:00:00Z", "expiresAt": "2030-01-01T00:00:00Z"
        }
    }))?;
    requests.create(&PostParams::default(), &request).await?;
    let edit = json!({"spec": {"call": {"target": "read_secret"}}});
    let refused = requests
        .patch("req-1", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap_err();
    assert_eq!(status_code(&refused), Some(422), "{refused}");
    assert!(
        refused.to_string().contains("spec is immutable"),
        "{refused}"
    );
    Ok(())
}
