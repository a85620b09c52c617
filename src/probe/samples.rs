//! The spec's example requests (section 11), with a fresh `ticketNo` where the API has
//! one, and the fields each API's response table promises.

use crate::guard::schema::Api;

/// One of the APIs a probe or a simulated call can send, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sample {
    Api1,
    Api2,
    Api3,
    Api4,
    Api5a,
    Api5b,
    Api6,
    Api7,
}

impl Sample {
    pub const NAMES: &'static str = "api1, api2, api3, api4, api5 (= api5a), api5b, api6, api7";

    pub fn parse(s: &str) -> Option<Sample> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "api1" => Sample::Api1,
            "api2" => Sample::Api2,
            "api3" => Sample::Api3,
            "api4" => Sample::Api4,
            "api5" | "api5a" => Sample::Api5a,
            "api5b" => Sample::Api5b,
            "api6" => Sample::Api6,
            "api7" => Sample::Api7,
            _ => return None,
        })
    }

    /// The schema table the request is checked against.
    pub fn api(self) -> Api {
        match self {
            Sample::Api1 => Api::Api1,
            Sample::Api2 => Api::Api2,
            Sample::Api3 => Api::Api3,
            Sample::Api4 => Api::Api4,
            Sample::Api5a => Api::Api5a,
            Sample::Api5b => Api::Api5b,
            Sample::Api6 => Api::Api6,
            Sample::Api7 => Api::Api7,
        }
    }

    pub fn name(self) -> &'static str {
        self.api().name()
    }

    /// Whether the example request carries a `ticketNo` (a timestamp freshness can use).
    pub fn has_ticket(self) -> bool {
        matches!(
            self,
            Sample::Api1 | Sample::Api2 | Sample::Api3 | Sample::Api4
        )
    }

    /// The example request with `ticket` (17 digits, IST) as its `ticketNo` (and, for API-2,
    /// its `appSubTime`). Field spellings are the spec's own.
    pub fn request(self, ticket: &str) -> String {
        let t = ticket;
        match self {
            Sample::Api1 => format!(
                r#"{{"userid":9054233544,"ticketNo":{t},"serviceCode":"AMD/003","name":"Arindam Ray","mobile":"9350778824","email":"arindam.ray@cmail.com","gender":"male","age":48}}"#
            ),
            Sample::Api2 => format!(
                r#"{{"userid":9054233544,"ticketNo":{t},"serviceCode":"AMD/003","appNo":"123456","appSubTime":{t},"deptPayRefNo":"23424423424","transNo":"1234353435","bankRefNo":"4653443656","paidAmt":200.00,"message":"Draft Submitted","applicationStatus":2,"statusCode":200}}"#
            ),
            Sample::Api3 => format!(
                r#"{{"userId":9054233544,"tokenNo":{t},"serviceCode":"AMD/003","applicationNo":"AP7373633/003"}}"#
            ),
            Sample::Api4 => format!(
                r#"{{"userId":9054233544,"tokenNo":{t},"serviceCode":"AMD/003","applicationNo":"AP7373633/003"}}"#
            ),
            Sample::Api5a => r#"{"otpId":393747483,"documentNo":"AP7364733/273"}"#.into(),
            Sample::Api5b => r#"{"otpId":393747483,"userTypedOtp":8374}"#.into(),
            Sample::Api6 => r#"{"userId":9054233544,"deptCode":"AMD","accessCode":7364443}"#.into(),
            Sample::Api7 => r#"{"fromDate":"2022-12-10","toDate":"2022-12-22"}"#.into(),
        }
    }

    /// Fields the response table lists (any documented spelling); for API-7, the fields of
    /// each element of the array it answers.
    pub fn response_fields(self) -> &'static [&'static [&'static str]] {
        match self {
            Sample::Api1 => &[
                &["userId", "userid"],
                &["ticketNo", "ticketno", "tokenNo"],
                &["applicationStatus"],
                &["statusCode"],
            ],
            Sample::Api2 => &[&["appNo"], &["responseStatus"], &["statusCode"]],
            Sample::Api3 => &[&["applicationStage"], &["statusCode"]],
            Sample::Api4 => &[&["documentType"], &["documentValue"], &["statusCode"]],
            Sample::Api5a => &[&["otpId", "otpld"], &["otpGenStatus"], &["statusCode"]],
            Sample::Api5b => &[
                &["otpId", "otpld"],
                &["documentType"],
                &["documentValue"],
                &["statusCode"],
            ],
            Sample::Api6 => &[
                &["userId", "userid"],
                &["userName"],
                &["userStatus"],
                &["statusCode"],
            ],
            Sample::Api7 => &[
                &["userid", "userId"],
                &["ticketNo", "ticketno"],
                &["applicationStatus"],
            ],
        }
    }

    /// Which response-table fields `answer` lacks (`Err` when it is not the JSON shape the
    /// table describes: an object, or for API-7 an array of objects).
    pub fn missing_response_fields(
        self,
        answer: &serde_json::Value,
    ) -> Result<Vec<&'static str>, &'static str> {
        let objects: Vec<&serde_json::Map<String, serde_json::Value>> = match (self, answer) {
            (Sample::Api7, serde_json::Value::Array(items)) => {
                let objs: Vec<_> = items.iter().filter_map(|v| v.as_object()).collect();
                if objs.len() != items.len() {
                    return Err("an array whose elements are not all objects");
                }
                objs
            }
            (Sample::Api7, _) => return Err("not a JSON array"),
            (_, serde_json::Value::Object(o)) => vec![o],
            _ => return Err("not a JSON object"),
        };
        let mut missing = Vec::new();
        for spellings in self.response_fields() {
            let present = objects
                .iter()
                .all(|o| spellings.iter().any(|s| o.contains_key(*s)));
            if !present {
                if let Some(first) = spellings.first() {
                    missing.push(*first);
                }
            }
        }
        Ok(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::schema;

    const ALL: [Sample; 8] = [
        Sample::Api1,
        Sample::Api2,
        Sample::Api3,
        Sample::Api4,
        Sample::Api5a,
        Sample::Api5b,
        Sample::Api6,
        Sample::Api7,
    ];

    #[test]
    fn every_example_request_passes_its_own_schema() {
        for s in ALL {
            let plain = s.request("20221202153322882");
            assert_eq!(
                schema::check(s.api(), plain.as_bytes()),
                Ok(()),
                "{}",
                s.name()
            );
            assert_eq!(Sample::parse(s.name()), Some(s));
        }
        assert_eq!(Sample::parse("api5"), Some(Sample::Api5a));
        assert_eq!(Sample::parse("api8"), None);
    }

    #[test]
    fn response_tables_name_missing_fields() {
        let ok = serde_json::json!({"appNo":"1","responseStatus":"Success","statusCode":200});
        assert_eq!(Sample::Api2.missing_response_fields(&ok), Ok(vec![]));
        let bad = serde_json::json!({"appNo":"1"});
        assert_eq!(
            Sample::Api2.missing_response_fields(&bad),
            Ok(vec!["responseStatus", "statusCode"])
        );
        let arr = serde_json::json!([{"userid":1,"ticketNo":2,"applicationStatus":3}]);
        assert_eq!(Sample::Api7.missing_response_fields(&arr), Ok(vec![]));
        assert!(Sample::Api7.missing_response_fields(&ok).is_err());
    }
}
