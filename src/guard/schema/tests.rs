//! Each schema against the spec's own example requests (accepted) and broken variants
//! (refused, naming the field).

use super::*;

fn fields(api: Api, json: &str) -> Vec<&'static str> {
    match check(api, json.as_bytes()) {
        Ok(()) => Vec::new(),
        Err(problems) => problems.iter().map(|p| p.field).collect(),
    }
}

/// The example requests of section 11, as printed (aliases and all, conversion errors
/// in punctuation fixed).
const EXAMPLES: &[(Api, &str)] = &[
    (
        Api::Api1,
        r#"{ "userid": 9054233544, "ticketNo": 20220811130723, "serviceCode": "AMD/003", "name": "Arindam Ray", "mobile": "9350778824", "email": "arindam.ray@cmail.com", "gender": "male", "age": 48 }"#,
    ),
    (
        Api::Api2,
        r#"{ "userid": 9054233544, "ticketNo": 20220811050723, "serviceCode": "AMD/003", "appNo": "123456", "appSubTime": 20220811052025, "deptPayRefNo": "23424423424", "transNo": "1234353435", "bankRefNo": "4653443656", "paidAmt": 200.00, "message": "Draft Submitted", "applicationStatus": 2, "statusCode": 200 }"#,
    ),
    (
        Api::Api3,
        r#"{ "userId": 9054233544, "tokenNo": 20220811050723, "serviceCode": "AMD/003", "applicationNo": "AP7373633/003" }"#,
    ),
    (
        Api::Api4,
        r#"{ "userId": 9054233544, "tokenNo": 20220811050723, "serviceCode": "AMD/003", "applicationNo": "AP7373633/003" }"#,
    ),
    (
        Api::Api5a,
        r#"{ "otpld":393747483, "documentNo": "AP7364733/273" }"#,
    ),
    (
        Api::Api5b,
        r#"{ "otpld": 393747483, "userTypedOtp": 8374 }"#,
    ),
    (
        Api::Api6,
        r#"{ "userId": 9054233544, "deptCode": "AMD", "accessCode":7364443 }"#,
    ),
    (
        Api::Api7,
        r#"{ "formDate" : "2022-12-10", "toDate" : "2022-12-22" }"#,
    ),
];

#[test]
fn the_spec_examples_are_accepted() {
    for (api, json) in EXAMPLES {
        assert_eq!(fields(*api, json), Vec::<&str>::new(), "{api:?}");
    }
}

#[test]
fn api1_refusals_name_the_field() {
    assert_eq!(
        fields(
            Api::Api1,
            r#"{"userid":905423354,"ticketNo":20220811130723,"serviceCode":"AMD/003"}"#
        ),
        ["userid"]
    );
    assert_eq!(
        fields(
            Api::Api1,
            r#"{"userid":9054233544,"ticketNo":20221311130723,"serviceCode":"AMD/003"}"#
        ),
        ["ticketNo"]
    );
    assert_eq!(
        fields(
            Api::Api1,
            r#"{"userid":9054233544,"ticketNo":20220811130723,"serviceCode":"ZZZ003"}"#
        ),
        ["serviceCode"]
    );
    assert_eq!(
        fields(
            Api::Api1,
            r#"{"userid":9054233544,"ticketNo":20220811130723,"serviceCode":"AMD/03"}"#
        ),
        ["serviceCode"]
    );
    assert_eq!(
        fields(
            Api::Api1,
            r#"{"ticketNo":20220811130723,"serviceCode":"AMD001","age":"old"}"#
        ),
        ["userid", "age"]
    );
}

#[test]
fn api2_application_status_must_be_draft_or_final() {
    let base = r#"{"userid":9054233544,"ticketNo":20220811050723,"serviceCode":"AMD/003","appNo":"1","appSubTime":20220811052025,"applicationStatus":STATUS}"#;
    assert!(fields(Api::Api2, &base.replace("STATUS", "3")).is_empty());
    assert_eq!(
        fields(Api::Api2, &base.replace("STATUS", "1")),
        ["applicationStatus"]
    );
    assert_eq!(
        fields(Api::Api2, &base.replace("STATUS", "\"final\"")),
        ["applicationStatus"]
    );
}

#[test]
fn api7_dates_are_real_and_ordered() {
    assert!(fields(
        Api::Api7,
        r#"{"fromDate":"2022-12-10","toDate":"2022-12-10"}"#
    )
    .is_empty());
    assert!(fields(
        Api::Api7,
        r#"{"From Date":"2022-12-10","To Date":"2022-12-22"}"#
    )
    .is_empty());
    assert_eq!(
        fields(
            Api::Api7,
            r#"{"fromDate":"2022-12-23","toDate":"2022-12-22"}"#
        ),
        ["fromDate"]
    );
    assert_eq!(
        fields(
            Api::Api7,
            r#"{"fromDate":"2022-02-30","toDate":"2022-12-22"}"#
        ),
        ["fromDate"]
    );
    assert_eq!(
        fields(
            Api::Api7,
            r#"{"fromDate":"10-12-2022","toDate":"2022-12-22"}"#
        ),
        ["fromDate"]
    );
    assert_eq!(
        fields(Api::Api7, r#"{"toDate":"2022-12-22"}"#),
        ["fromDate"]
    );
}

#[test]
fn api6_needs_a_known_department() {
    assert_eq!(
        fields(
            Api::Api6,
            r#"{"userId":9054233544,"deptCode":"XYZ","accessCode":1}"#
        ),
        ["deptCode"]
    );
}

#[test]
fn real_world_spellings_and_whitespace_are_tolerated() {
    // userid as a string with stray CR LF, ticketno lower-case, ServiceCode capitalised.
    let json = "{\"userid\":\"9054233544\\r\\n\",\"ticketno\":\" 20221202153322882 \",\"ServiceCode\":\"AMD001\",\"extra\":{\"x\":1}}";
    assert!(fields(Api::Api1, json).is_empty());
}

#[test]
fn conflicting_spellings_are_refused() {
    let json = r#"{"userid":9054233544,"userId":9054233545,"ticketNo":20220811130723,"serviceCode":"AMD/003","applicationNo":"A"}"#;
    assert_eq!(fields(Api::Api3, json), ["userid"]);
    // The same value twice is fine.
    let json = r#"{"userid":9054233544,"userId":9054233544,"ticketNo":20220811130723,"serviceCode":"AMD/003","applicationNo":"A"}"#;
    assert!(fields(Api::Api3, json).is_empty());
}

#[test]
fn every_department_code_of_section_14_4_is_known() {
    assert_eq!(DEPARTMENT_CODES.len(), 57);
    let mut sorted = DEPARTMENT_CODES.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 57, "duplicate code");
    for code in DEPARTMENT_CODES {
        let json = format!(
            r#"{{"userid":9054233544,"ticketNo":20220811130723,"serviceCode":"{code}/001","applicationNo":"A"}}"#
        );
        assert!(fields(Api::Api3, &json).is_empty(), "{code}");
    }
}

#[test]
fn non_objects_are_refused() {
    assert_eq!(fields(Api::Api3, "[1,2]"), ["(body)"]);
    assert_eq!(fields(Api::Api3, "\"x\""), ["(body)"]);
}

#[test]
fn value_sets_are_checked_when_present() {
    let base = r#"{"userId":9054233544,"tokenNo":20220811050723,"serviceCode":"AMD/003","applicationNo":"A","documentType":DT}"#;
    assert!(fields(Api::Api4, &base.replace("DT", "6")).is_empty());
    assert_eq!(
        fields(Api::Api4, &base.replace("DT", "7")),
        ["documentType"]
    );
    let api3 = r#"{"userId":9054233544,"tokenNo":20220811050723,"serviceCode":"AMD/003","applicationNo":"A","applicationStatus":9}"#;
    assert_eq!(fields(Api::Api3, api3), ["applicationStatus"]);
}

/// Section 15's sample plaintext, as the deployed department code receives API-1.
const SECTION_15: &str = r#"{"userid":"8527419636","ticketno":"20221202153322882","citizenmobile":"9963258963","citizenname":"Anupam Ghosh"}"#;

#[test]
fn api1_as_deployed_code_receives_it_is_accepted() {
    assert_eq!(fields(Api::Api1, SECTION_15), Vec::<&str>::new());
    let with_email = r#"{"userid":"8527419636","ticketno":"20221202153322882","citizenmobile":"9963258963","citizenname":"Anupam Ghosh","citizenemail":"a.ghosh@example.in"}"#;
    assert_eq!(fields(Api::Api1, with_email), Vec::<&str>::new());
}

#[test]
fn api1_requires_only_the_service_entry_identity() {
    // (userid, ticketNo) identify the service entry; each is still required.
    assert_eq!(
        fields(Api::Api1, r#"{"ticketno":"20221202153322882"}"#),
        ["userid"]
    );
    assert_eq!(
        fields(Api::Api1, r#"{"userid":"8527419636"}"#),
        ["ticketNo"]
    );
    // Optional fields are still checked when present.
    assert_eq!(
        fields(
            Api::Api1,
            r#"{"userid":"8527419636","ticketno":"20221202153322882","serviceCode":"ZZZ001"}"#
        ),
        ["serviceCode"]
    );
    assert_eq!(
        fields(
            Api::Api1,
            r#"{"userid":"8527419636","ticketno":"20221202153322882","citizenname":{"first":"A"}}"#
        ),
        ["name"]
    );
    // Two spellings of one citizen field that disagree are refused like any other.
    assert_eq!(
        fields(
            Api::Api1,
            r#"{"userid":"8527419636","ticketno":"20221202153322882","mobile":"9963258963","citizenmobile":"9963258964"}"#
        ),
        ["mobile"]
    );
}

#[test]
fn api7_accepts_the_deployed_lower_case_dates() {
    assert!(fields(
        Api::Api7,
        r#"{"passcode":"376423","fromdate":"2022-12-10","todate":"2022-12-22","limit":100,"offset":0}"#
    )
    .is_empty());
    assert!(fields(
        Api::Api7,
        r#"{"From_Date":"2022-12-10","To_Date":"2022-12-22"}"#
    )
    .is_empty());
    assert_eq!(
        fields(
            Api::Api7,
            r#"{"fromdate":"2022-12-23","todate":"2022-12-22"}"#
        ),
        ["fromDate"]
    );
}

/// Regression: `serviceCode: "ÀÀÀ"` cut a `str` inside a character and panicked the
/// request task. Every field of every schema gets non-ASCII text of the lengths the
/// checks branch on; nothing panics, and every field that is not free text is refused.
#[test]
fn non_ascii_text_in_any_field_is_refused_without_panicking() {
    const TEXTS: &[&str] = &[
        "À",
        "ÀÀÀ",        // 6 bytes: the length of AMD001
        "AÀ/001",     // 7 bytes with `/` at byte 3
        "AMDÀ01",     // 7 bytes, a character across byte 3
        "ÀÀÀÀÀ",      // 10 bytes: the length of a userid
        "2022-À-10",  // 10 bytes, dashes where a date has them
        "২০২২-১২-১০", // a date in Bengali digits
        "ÀÀÀÀÀÀÀ",    // 14 bytes: the length of a ticketNo
        "ÀÀÀÀÀÀÀÀÀÀÀÀÀÀÀÀÀ",
        "বাংলা সহায়তা কেন্দ্র",
        "AMD/০০৩",
    ];
    for (api, example) in EXAMPLES {
        for field in api.fields() {
            for text in TEXTS {
                let mut obj: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(example).unwrap();
                for spelling in std::iter::once(field.name).chain(field.aliases.iter().copied()) {
                    obj.remove(spelling);
                }
                obj.insert(field.name.into(), (*text).into());
                let json = serde_json::Value::Object(obj).to_string();
                let refused = fields(*api, &json);
                if matches!(field.kind, Kind::Text) {
                    assert_eq!(refused, Vec::<&str>::new(), "{api:?} {json}");
                } else {
                    assert_eq!(refused, [field.name], "{api:?} {json}");
                }
            }
        }
    }
}
