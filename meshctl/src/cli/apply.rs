//! `meshctl apply -f FILE`: create or update routes and authorization
//! policies from YAML (or JSON) documents, told apart by their `kind`. All or nothing locally: every document is parsed and validated
//! before the first write, so a typo in document 3 does not leave documents 1
//! and 2 applied. Each write is a compare-and-swap on the revision just read,
//! so a concurrent writer is reported, never overwritten.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;

use anyhow::{bail, Context};
use mesh::model::{
    AuthorizationPolicy, RequestAuthentication, Route, AUTHORIZATION_POLICY_KIND,
    REQUEST_AUTHENTICATION_KIND,
};
use mesh::proto::mesh::v1::{
    ApplyPolicyRequest, ApplyRouteRequest, ApplyRouteResponse, GetPolicyRequest, GetRouteRequest,
};
use serde::Deserialize;

use super::output::print;
use super::{AdminClient, ControlPlaneArgs, GrpcError};

/// Options of `meshctl apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// File of routes (YAML or JSON, several `---`-separated documents
    /// allowed); `-` reads stdin. Repeat for several files.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<String>,
    /// Write only if the route's stored revision is N (0: only if it does
    /// not exist yet) instead of the revision read just before writing.
    /// Needs exactly one route.
    #[arg(long, value_name = "N")]
    pub expected_revision: Option<i64>,
}

/// A valid route and where it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedRoute {
    /// The file as named on the command line (`<stdin>` for `-`).
    pub file: String,
    /// 1-based position of the document in its file.
    pub document: usize,
    /// The route.
    pub route: Route,
}

/// A valid authorization policy and where it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedPolicy {
    /// The file as named on the command line (`<stdin>` for `-`).
    pub file: String,
    /// 1-based position of the document in its file.
    pub document: usize,
    /// The policy.
    pub policy: AuthorizationPolicy,
}

/// A valid request authentication and where it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedAuthentication {
    /// The file as named on the command line (`<stdin>` for `-`).
    pub file: String,
    /// 1-based position of the document in its file.
    pub document: usize,
    /// The request authentication.
    pub authentication: RequestAuthentication,
}

/// Every valid document of one or more files, by kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    /// `kind: Route`.
    pub routes: Vec<SourcedRoute>,
    /// `kind: AuthorizationPolicy`.
    pub policies: Vec<SourcedPolicy>,
    /// `kind: RequestAuthentication`.
    pub authentications: Vec<SourcedAuthentication>,
}

/// Why one document cannot be applied, with enough to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// The file as named on the command line.
    pub file: String,
    /// 1-based position of the document in its file.
    pub document: usize,
    /// `metadata.name`, when the document has one.
    pub route: Option<String>,
    /// What the document is (`route`, `authorization policy`).
    pub kind: &'static str,
    /// What is wrong: a field path and reason, or the YAML parser's message.
    pub message: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(name) = &self.route {
            write!(f, " ({} {name:?})", self.kind)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The routes of one file (and the errors of every document in it).
pub fn parse_routes(file: &str, text: &str) -> (Vec<SourcedRoute>, Vec<DocumentError>) {
    let (manifests, errors) = parse_manifests(file, text);
    (manifests.routes, errors)
}

/// Parses and validates every document of one file. Empty documents are
/// skipped; the rest are routes, policies (by `kind`) or errors.
pub fn parse_manifests(file: &str, text: &str) -> (Manifests, Vec<DocumentError>) {
    // First as plain YAML values: finds the route names for error messages,
    // and where a syntax error is. Parsing stops there, because libyaml
    // cannot resynchronise after one (it would report it again forever).
    let mut values = Vec::new();
    let mut syntax_error = None;
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        match serde_yaml_ng::Value::deserialize(document) {
            Ok(value) => values.push(value),
            Err(error) => {
                syntax_error = Some(error);
                break;
            }
        }
    }

    // Then as their kind, straight from the text, so serde's errors carry
    // the field path and line (`spec: unknown field `splits`, ... at line 7`).
    let mut routes = Vec::new();
    let mut policies = Vec::new();
    let mut authentications = Vec::new();
    let mut errors = Vec::new();
    let documents = serde_yaml_ng::Deserializer::from_str(text).take(values.len());
    for (i, (document, value)) in documents.zip(&values).enumerate() {
        let kind = value.get("kind").and_then(serde_yaml_ng::Value::as_str);
        let error = |message: String| DocumentError {
            file: file.to_owned(),
            document: i + 1,
            route: route_name(value),
            kind: match kind {
                Some(AUTHORIZATION_POLICY_KIND) => "authorization policy",
                Some(REQUEST_AUTHENTICATION_KIND) => "request authentication",
                _ => "route",
            },
            message,
        };
        if kind == Some(REQUEST_AUTHENTICATION_KIND) {
            match RequestAuthentication::deserialize(document) {
                Ok(authentication) => match authentication.validate() {
                    Ok(()) => authentications.push(SourcedAuthentication {
                        file: file.to_owned(),
                        document: i + 1,
                        authentication,
                    }),
                    Err(invalid) => errors.push(error(invalid.to_string())),
                },
                Err(invalid) => errors.push(error(invalid.to_string())),
            }
            continue;
        }
        if kind == Some(AUTHORIZATION_POLICY_KIND) {
            match AuthorizationPolicy::deserialize(document) {
                Ok(policy) => match policy.validate() {
                    Ok(()) => policies.push(SourcedPolicy {
                        file: file.to_owned(),
                        document: i + 1,
                        policy,
                    }),
                    Err(invalid) => errors.push(error(invalid.to_string())),
                },
                Err(invalid) => errors.push(error(invalid.to_string())),
            }
            continue;
        }
        match Option::<Route>::deserialize(document) {
            Ok(None) => {}
            Ok(Some(route)) => match route.validate() {
                Ok(()) => routes.push(SourcedRoute {
                    file: file.to_owned(),
                    document: i + 1,
                    route,
                }),
                Err(invalid) => errors.push(error(invalid.to_string())),
            },
            Err(invalid) => errors.push(error(invalid.to_string())),
        }
    }
    if let Some(syntax_error) = syntax_error {
        errors.push(DocumentError {
            file: file.to_owned(),
            document: values.len() + 1,
            route: None,
            kind: "route",
            message: syntax_error.to_string(),
        });
    }
    (
        Manifests {
            routes,
            policies,
            authentications,
        },
        errors,
    )
}

fn route_name(document: &serde_yaml_ng::Value) -> Option<String> {
    document
        .get("metadata")?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

/// Two documents naming the same route in one apply: which one should win
/// is a guess, so neither does.
pub fn duplicate_names(routes: &[SourcedRoute]) -> Vec<DocumentError> {
    duplicates(
        "route",
        routes
            .iter()
            .map(|r| (r.route.metadata.name.as_str(), r.file.as_str(), r.document)),
    )
}

/// The same for documents of any kind: (name, file, document) of each.
fn duplicates<'a>(
    noun: &'static str,
    documents: impl Iterator<Item = (&'a str, &'a str, usize)>,
) -> Vec<DocumentError> {
    let mut first: HashMap<&str, (&str, usize)> = HashMap::new();
    let mut errors = Vec::new();
    for (name, file, document) in documents {
        match first.get(name) {
            Some((earlier_file, earlier_document)) => errors.push(DocumentError {
                file: file.to_owned(),
                document,
                route: Some(name.to_owned()),
                kind: noun,
                message: format!(
                    "metadata.name: {noun} {name:?} is also defined in {earlier_file} document {earlier_document}"
                ),
            }),
            None => {
                first.insert(name, (file, document));
            }
        }
    }
    errors
}

/// What an apply did to one route, worded like kubectl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// It existed and changed.
    Configured,
    /// It was already identical; nothing was written.
    Unchanged,
}

impl Outcome {
    fn of(response: &ApplyRouteResponse) -> Self {
        Self::from_flags(response.created, response.changed)
    }

    fn from_flags(created: bool, changed: bool) -> Self {
        if created {
            Self::Created
        } else if changed {
            Self::Configured
        } else {
            Self::Unchanged
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
        })
    }
}

/// Runs `meshctl apply`.
pub async fn run(control_plane: &ControlPlaneArgs, args: ApplyArgs) -> anyhow::Result<()> {
    let manifests = read_manifests(&args.files)?;
    let total = manifests.routes.len() + manifests.policies.len() + manifests.authentications.len();
    if args.expected_revision.is_some() && total != 1 {
        bail!("--expected-revision needs exactly one document, the files hold {total}");
    }
    let mut client = control_plane.connect().await?;
    let mut failed = 0;
    let guards = manifests.policies.len() + manifests.authentications.len();
    // Many documents: say which phase this is (on stderr; stdout keeps one
    // line per document, for scripts).
    if total > 1 {
        eprintln!(
            "meshctl apply: {total} documents: {guards} authentications and policies first, then {} routes",
            manifests.routes.len()
        );
    }
    // Policies first: a route that opens a path goes live after the
    // policies that guard it.
    let policies = manifests
        .authentications
        .iter()
        .map(|a| {
            let json = serde_json::to_string(&a.authentication);
            (
                PolicyKind::Authentication,
                &a.authentication.metadata.name,
                json,
            )
        })
        .chain(manifests.policies.iter().map(|p| {
            let json = serde_json::to_string(&p.policy);
            (PolicyKind::Authorization, &p.policy.metadata.name, json)
        }));
    for (kind, name, json) in policies {
        match apply_policy(&mut client, kind, name, json?, args.expected_revision).await {
            Ok((outcome, revision)) => {
                print(&format!(
                    "{}/{name} {outcome} (revision {revision})\n",
                    kind.resource()
                ))?;
            }
            Err(error) => {
                failed += 1;
                eprintln!("{} {name:?}: {error:#}", kind.noun());
            }
        }
    }
    if total > 1 && !manifests.routes.is_empty() {
        eprintln!("meshctl apply: routes");
    }
    for r in &manifests.routes {
        let name = &r.route.metadata.name;
        match apply_one(&mut client, &r.route, args.expected_revision).await {
            Ok((outcome, revision)) => {
                print(&format!("route/{name} {outcome} (revision {revision})\n"))?;
            }
            Err(error) => {
                failed += 1;
                eprintln!("route {name:?}: {error:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {total} documents not applied");
    }
    Ok(())
}

/// Reads, parses and validates every file; any bad document fails the lot
/// (each one printed to stderr first).
fn read_manifests(files: &[String]) -> anyhow::Result<Manifests> {
    if files.iter().filter(|f| *f == "-").count() > 1 {
        bail!("-f - (stdin) given more than once");
    }
    let mut manifests = Manifests::default();
    let mut errors = Vec::new();
    for file in files {
        let (name, text) = if file == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read stdin")?;
            ("<stdin>".to_owned(), text)
        } else {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
            (file.clone(), text)
        };
        let (good, bad) = parse_manifests(&name, &text);
        manifests.routes.extend(good.routes);
        manifests.policies.extend(good.policies);
        manifests.authentications.extend(good.authentications);
        errors.extend(bad);
    }
    errors.extend(duplicate_names(&manifests.routes));
    errors.extend(duplicates(
        "authorization policy",
        manifests
            .policies
            .iter()
            .map(|p| (p.policy.metadata.name.as_str(), p.file.as_str(), p.document)),
    ));
    errors.extend(duplicates(
        "request authentication",
        manifests.authentications.iter().map(|a| {
            (
                a.authentication.metadata.name.as_str(),
                a.file.as_str(),
                a.document,
            )
        }),
    ));
    if !errors.is_empty() {
        for error in &errors {
            eprintln!("{error}");
        }
        let s = if errors.len() == 1 { "" } else { "s" };
        bail!("nothing applied: {} invalid document{s}", errors.len());
    }
    if manifests.routes.is_empty()
        && manifests.policies.is_empty()
        && manifests.authentications.is_empty()
    {
        bail!("no routes or policies in {}", files.join(", "));
    }
    Ok(manifests)
}

/// The policy-like kinds, written through their own admin calls.
#[derive(Debug, Clone, Copy)]
enum PolicyKind {
    Authorization,
    Authentication,
}

impl PolicyKind {
    /// As kubectl names resources in its output.
    fn resource(self) -> &'static str {
        match self {
            Self::Authorization => "authorizationpolicy",
            Self::Authentication => "requestauthentication",
        }
    }

    /// In messages.
    fn noun(self) -> &'static str {
        match self {
            Self::Authorization => "authorization policy",
            Self::Authentication => "request authentication",
        }
    }
}

/// Writes one policy-like document (`json`), compare-and-swap like
/// [`apply_one`].
async fn apply_policy(
    client: &mut AdminClient,
    kind: PolicyKind,
    name: &str,
    policy_json: String,
    expected_revision: Option<i64>,
) -> anyhow::Result<(Outcome, i64)> {
    let expected = match expected_revision {
        Some(revision) => revision,
        None => {
            let request = GetPolicyRequest {
                name: name.to_owned(),
            };
            let stored = match kind {
                PolicyKind::Authorization => client.get_authorization_policy(request).await,
                PolicyKind::Authentication => client.get_request_authentication(request).await,
            };
            match stored {
                Ok(stored) => stored.into_inner().revision,
                Err(status) if status.code() == tonic::Code::NotFound => 0,
                Err(status) => {
                    return Err(GrpcError(status)).context("cannot read its current revision")
                }
            }
        }
    };
    let request = ApplyPolicyRequest {
        policy_json,
        expected_revision: Some(expected),
    };
    let applied = match kind {
        PolicyKind::Authorization => client.apply_authorization_policy(request).await,
        PolicyKind::Authentication => client.apply_request_authentication(request).await,
    };
    let response = match applied {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::Aborted => {
            bail!("conflict: {}", status.message())
        }
        Err(status) => return Err(GrpcError(status).into()),
    };
    let revision = response.policy.as_ref().map_or(0, |p| p.revision);
    Ok((
        Outcome::from_flags(response.created, response.changed),
        revision,
    ))
}

/// Writes one route: compare-and-swap on `expected_revision`, or on the
/// revision read just now (0 when absent: it must still be absent).
async fn apply_one(
    client: &mut AdminClient,
    route: &Route,
    expected_revision: Option<i64>,
) -> anyhow::Result<(Outcome, i64)> {
    let name = &route.metadata.name;
    let expected = match expected_revision {
        Some(revision) => revision,
        None => {
            let request = GetRouteRequest { name: name.clone() };
            match client.get_route(request).await {
                Ok(stored) => stored.into_inner().revision,
                Err(status) if status.code() == tonic::Code::NotFound => 0,
                Err(status) => {
                    return Err(GrpcError(status)).context("cannot read its current revision")
                }
            }
        }
    };
    let request = ApplyRouteRequest {
        route_json: serde_json::to_string(route).context("cannot encode the route as JSON")?,
        expected_revision: Some(expected),
    };
    let response = match client.apply_route(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::Aborted => {
            bail!("conflict: {}", status.message())
        }
        Err(status) => return Err(GrpcError(status).into()),
    };
    let revision = response.route.as_ref().map_or(0, |r| r.revision);
    Ok((Outcome::of(&response), revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_ROUTES: &str = r#"
kind: Route
metadata: { name: catalog }
spec:
  match: { service: shop.catalog.v1.CatalogService }
  destination: catalog
---
# only a comment: an empty document, skipped
---
kind: Route
metadata:
  name: inventory
spec:
  match: { service: shop.inventory.v1.InventoryService, method: Reserve }
  destination: inventory
  split:
    - { subset: v1, weight: 90 }
    - { subset: v2, weight: 10 }
"#;

    fn messages(errors: &[DocumentError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn multi_document_stream_yields_routes_and_skips_empty_documents() {
        let (routes, errors) = parse_routes("routes.yaml", TWO_ROUTES);
        assert!(errors.is_empty(), "{errors:?}");
        let found: Vec<_> = routes
            .iter()
            .map(|r| (r.route.metadata.name.as_str(), r.document))
            .collect();
        assert_eq!(found, [("catalog", 1), ("inventory", 3)]);
        assert_eq!(routes[1].route.spec.split[1].weight, 10);
    }

    #[test]
    fn empty_file_has_no_routes_and_no_errors() {
        for text in ["", "\n# nothing\n", "---\n---\n"] {
            let (routes, errors) = parse_routes("empty.yaml", text);
            assert!(
                routes.is_empty() && errors.is_empty(),
                "{text:?}: {errors:?}"
            );
        }
    }

    #[test]
    fn json_is_accepted() {
        let route = &parse_routes("catalog.yaml", TWO_ROUTES).0[0].route;
        let json = serde_json::to_string(route).unwrap();
        let (routes, errors) = parse_routes("catalog.json", &json);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(&routes[0].route, route);
    }

    #[test]
    fn validation_error_names_file_document_route_and_field() {
        let text = TWO_ROUTES
            .replace("weight: 90", "weight: 0")
            .replace("weight: 10", "weight: 0");
        let (routes, errors) = parse_routes("routes.yaml", &text);
        assert_eq!(routes.len(), 1);
        assert_eq!(
            messages(&errors),
            [
                "routes.yaml: document 3 (route \"inventory\"): spec.split[*].weight: \
              weights sum to 0: no subset would get traffic"
            ]
        );
    }

    #[test]
    fn unknown_field_error_names_the_field_and_the_document() {
        let text = TWO_ROUTES.replace("  split:", "  splits:");
        let (_, errors) = parse_routes("routes.yaml", &text);
        let [error] = &errors[..] else {
            panic!("{errors:?}")
        };
        assert_eq!(error.document, 3);
        assert_eq!(error.route.as_deref(), Some("inventory"));
        assert!(error.message.contains("unknown field `splits`"), "{error}");
        assert!(error.message.contains("spec"), "{error}");
    }

    #[test]
    fn every_bad_document_is_reported() {
        let text = "kind: Rout\nmetadata: {name: a}\nspec: {match: {service: a.B}, destination: a}\n\
                    ---\nkind: Route\nmetadata: {name: B}\nspec: {match: {service: a.B}, destination: a}\n";
        let (routes, errors) = parse_routes("f.yaml", text);
        assert!(routes.is_empty());
        let errors = messages(&errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("f.yaml: document 1 (route \"a\"): kind: "));
        assert!(errors[1].starts_with("f.yaml: document 2 (route \"B\"): metadata.name: "));
    }

    #[test]
    fn syntax_error_stops_parsing_at_its_document() {
        let text = format!("{TWO_ROUTES}---\nkind: [unclosed\n---\nkind: Route\n");
        let (routes, errors) = parse_routes("routes.yaml", &text);
        assert_eq!(routes.len(), 2);
        let [error] = &errors[..] else {
            panic!("{errors:?}")
        };
        assert_eq!((error.document, error.route.as_deref()), (4, None));
        assert!(error.message.contains("line"), "{error}");
    }

    #[test]
    fn wrong_shape_is_an_error_not_a_panic() {
        let (routes, errors) = parse_routes("list.yaml", "- 1\n- 2\n");
        assert!(routes.is_empty());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].document, 1);
    }

    #[test]
    fn the_same_route_twice_is_refused() {
        let (mut routes, _) = parse_routes("a.yaml", TWO_ROUTES);
        let (again, _) = parse_routes("b.yaml", TWO_ROUTES);
        routes.extend(again);
        assert_eq!(
            messages(&duplicate_names(&routes)),
            [
                "b.yaml: document 1 (route \"catalog\"): metadata.name: route \"catalog\" \
                 is also defined in a.yaml document 1",
                "b.yaml: document 3 (route \"inventory\"): metadata.name: route \"inventory\" \
                 is also defined in a.yaml document 3",
            ]
        );
    }

    #[test]
    fn outcome_reads_like_kubectl() {
        let response = |created, changed| ApplyRouteResponse {
            route: None,
            created,
            changed,
        };
        assert_eq!(Outcome::of(&response(true, true)), Outcome::Created);
        assert_eq!(Outcome::of(&response(false, true)), Outcome::Configured);
        assert_eq!(
            Outcome::of(&response(false, false)).to_string(),
            "unchanged"
        );
    }

    #[test]
    fn policies_and_routes_are_told_apart_by_kind_and_checked_alike() {
        let text = format!(
            "{TWO_ROUTES}---
kind: AuthorizationPolicy
metadata: {{ name: payments }}
spec:
  service: payments
  rules:
    - from: [{{ service: orders }}]
      to: [shop.payments.v1.PaymentsService/Charge]
---
kind: AuthorizationPolicy
metadata: {{ name: broken }}
spec:
  service: payments
  rules:
    - to: [Charge]
"
        );
        let (manifests, errors) = parse_manifests("f.yaml", &text);
        assert_eq!(manifests.routes.len(), 2);
        assert_eq!(manifests.policies.len(), 1);
        assert_eq!(manifests.policies[0].policy.metadata.name, "payments");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().starts_with(
                "f.yaml: document 5 (authorization policy \"broken\"): spec.rules[0].to[0]"
            ),
            "{}",
            errors[0]
        );
    }
}
