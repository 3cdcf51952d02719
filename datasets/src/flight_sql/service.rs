//! The Flight SQL service: arrow-flight's [`FlightSqlService`] over the context's DataFusion
//! session.
//!
//! A query's `GetFlightInfo` plans it (which reports syntax, name and type errors at once)
//! and answers with its schema and one ticket. The ticket carries the statement (see
//! [`super::handles`]), and `DoGet` plans it again and streams the batches as DataFusion
//! produces them. A client that cancels drops the stream, and dropping it stops the query.
//! DDL and DML (`CREATE EXTERNAL TABLE`, `CREATE VIEW`, `INSERT`, ...) run when they are
//! planned, whether they arrive as a query or as an update, and their ticket yields no rows.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, SqlSupportedTransaction,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::common::ParamValues;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use futures::{Stream, TryStreamExt};
use manta_flight::auth::Token;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::access::SqlAccess;
use super::handles::Statement;
use super::sessions::Sessions;

/// The ticket of a statement that already ran (DDL, DML): no rows.
const DONE: &[u8] = b"done";

type DataStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// The service (see the module doc).
///
/// Who may call it is decided before it is called (the server guards it with
/// [`manta_flight::auth::RequireToken`]); a handshake answers with the bearer token, so that
/// clients that logged in with user and password present it from then on.
#[derive(Clone)]
pub struct MantaFlightSql {
    /// The session of the client being served (the shared one until [`Self::for_client`]).
    session: SessionContext,
    sessions: Arc<Sessions>,
    token: Token,
    access: SqlAccess,
}

impl MantaFlightSql {
    /// The service over `session`'s tables, whose callers present `token` and may run what
    /// `access` allows; each client in a session of its own over them ([`super::sessions`]).
    pub fn new(session: SessionContext, token: Token, access: SqlAccess) -> Self {
        Self {
            sessions: Arc::new(Sessions::new(session.clone())),
            session,
            token,
            access,
        }
    }

    /// This service as the client of `request` sees it: in its own session.
    fn for_client<T>(&self, request: &Request<T>) -> Self {
        Self {
            session: self.sessions.of(request.remote_addr()),
            ..self.clone()
        }
    }

    /// Plans `statement` with its parameters bound, refusing what nests too deeply to plan
    /// ([`super::nesting`]) and what the endpoint's [`SqlAccess`] does not allow. Every statement a client sends passes here.
    async fn plan(&self, statement: &Statement) -> Result<LogicalPlan, Status> {
        super::nesting::check(&statement.sql)?;
        let plan = self
            .session
            .state()
            .create_logical_plan(&statement.sql)
            .await
            .map_err(sql_error)?;
        self.access.check(&plan)?;
        if statement.params.is_empty() {
            return Ok(plan);
        }
        plan.with_param_values(ParamValues::from(statement.params.clone()))
            .map_err(sql_error)
    }

    /// Runs a plan now and returns its rows: for statements that change the catalog or data.
    async fn run_now(&self, plan: LogicalPlan) -> Result<Vec<RecordBatch>, Status> {
        self.session
            .execute_logical_plan(plan)
            .await
            .map_err(sql_error)?
            .collect()
            .await
            .map_err(sql_error)
    }

    /// The `FlightInfo` for `statement`: DDL and DML run here; a query is only planned.
    async fn statement_info(
        &self,
        statement: Statement,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let plan = self.plan(&statement).await?;
        if statement.params.is_empty() {
            let mut unbound: Vec<String> = plan
                .get_parameter_types()
                .map_err(sql_error)?
                .into_keys()
                .collect();
            if !unbound.is_empty() {
                unbound.sort();
                return Err(Status::invalid_argument(format!(
                    "no values are bound to the statement's parameters {}: bind them with \
                     DoPut before running it",
                    unbound.join(", ")
                )));
            }
        }
        let (schema, handle) = if runs_when_planned(&plan) {
            self.run_now(plan).await?;
            (Schema::empty(), DONE.to_vec().into())
        } else {
            (plan.schema().as_arrow().clone(), statement.encode()?)
        };
        let ticket = TicketStatementQuery {
            statement_handle: handle,
        };
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(format!("encoding the schema: {e}")))?
            .with_endpoint(
                FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec())),
            )
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    /// Runs an update (DDL or DML) and returns the rows it changed (0 for DDL).
    async fn update(&self, statement: Statement) -> Result<i64, Status> {
        let plan = self.plan(&statement).await?;
        let batches = self.run_now(plan).await?;
        Ok(changed_rows(&batches))
    }
}

/// DDL, DML and statements (`SET`, transactions) have effects: they run when planned.
fn runs_when_planned(plan: &LogicalPlan) -> bool {
    matches!(
        plan,
        LogicalPlan::Ddl(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Copy(_)
    )
}

/// A DML answer's `count` column summed; 0 when there is none.
fn changed_rows(batches: &[RecordBatch]) -> i64 {
    batches
        .iter()
        .filter_map(|b| b.column_by_name("count"))
        .filter_map(|c| {
            c.as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
                .cloned()
        })
        .map(|c| c.iter().flatten().sum::<u64>() as i64)
        .sum()
}

/// A DataFusion error as a gRPC status: mistakes in the query are the caller's
/// (`INVALID_ARGUMENT`), with DataFusion's message, which names the culprit and, for syntax
/// errors, its line and column.
pub fn sql_error(error: DataFusionError) -> Status {
    let message = error.strip_backtrace();
    match error.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::ArrowError(..) => Status::invalid_argument(message),
        DataFusionError::NotImplemented(_) => Status::unimplemented(message),
        _ => Status::internal(message),
    }
}

/// Streams `batches` (or an empty answer of `schema`) to the client.
fn stream_batches(schema: SchemaRef, batches: Vec<RecordBatch>) -> Response<DataStream> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from);
    Response::new(Box::pin(stream))
}

/// One metadata batch as a `FlightInfo`: `command` is its own ticket.
fn metadata_info(
    command: impl ProstMessageExt,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("encoding the schema: {e}")))?
        .with_endpoint(
            FlightEndpoint::new().with_ticket(Ticket::new(command.as_any().encode_to_vec())),
        )
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// What `GetSqlInfo` reports.
static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut info = SqlInfoDataBuilder::new();
    info.append(SqlInfo::FlightSqlServerName, "Manta");
    info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    info.append(SqlInfo::FlightSqlServerReadOnly, false);
    info.append(SqlInfo::FlightSqlServerSql, true);
    info.append(SqlInfo::FlightSqlServerSubstrait, false);
    info.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    info.append(SqlInfo::FlightSqlServerCancel, true);
    info.append(SqlInfo::SqlDdlCatalog, false);
    info.append(SqlInfo::SqlDdlSchema, true);
    info.append(SqlInfo::SqlDdlTable, true);
    info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    info.append(SqlInfo::SqlIdentifierCase, 1_i32); // case insensitive, as DataFusion folds
    info.build().expect("a valid SqlInfo table")
});

fn table_type_name(table_type: TableType) -> &'static str {
    match table_type {
        TableType::Base => "TABLE",
        TableType::View => "VIEW",
        TableType::Temporary => "LOCAL TEMPORARY",
    }
}

#[tonic::async_trait]
impl FlightSqlService for MantaFlightSql {
    type FlightService = MantaFlightSql;

    /// The caller got here with the token (as a bearer, or as a `Basic` password): the answer
    /// carries it as the bearer token to present on later calls, as ADBC and JDBC expect.
    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        };
        let mut response =
            Response::new(Box::pin(futures::stream::once(async { Ok(response) })) as Pin<Box<_>>);
        response
            .metadata_mut()
            .insert(manta_flight::auth::HEADER, self.token.header_value());
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.for_client(&request)
            .statement_info(Statement::new(&query.query), request.into_inner())
            .await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let statement = Statement::decode(&query.prepared_statement_handle)?;
        self.for_client(&request)
            .statement_info(statement, request.into_inner())
            .await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        if ticket.statement_handle.as_ref() == DONE {
            return Ok(stream_batches(Arc::new(Schema::empty()), Vec::new()));
        }
        let statement = Statement::decode(&ticket.statement_handle)?;
        let this = self.for_client(&request);
        let plan = this.plan(&statement).await?;
        let rows = this
            .session
            .execute_logical_plan(plan)
            .await
            .map_err(sql_error)?
            .execute_stream()
            .await
            .map_err(sql_error)?;
        let schema = rows.schema();
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(rows.map_err(|e| FlightError::Tonic(Box::new(sql_error(e)))))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let ticket = TicketStatementQuery {
            statement_handle: query.prepared_statement_handle,
        };
        self.do_get_statement(ticket, request).await
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.for_client(&request)
            .update(Statement::new(&command.query))
            .await
    }

    async fn do_put_prepared_statement_update(
        &self,
        command: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.for_client(&request)
            .update(Statement::decode(&command.prepared_statement_handle)?)
            .await
    }

    /// Binds parameters: the answer is a new handle that carries them.
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let statement = Statement::decode(&query.prepared_statement_handle)?;
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
                request.into_inner().map_err(FlightError::from),
            )
            .try_collect()
            .await
            .map_err(Status::from)?;
        let Some(first) = batches.first() else {
            return Err(Status::invalid_argument("no parameter values were sent"));
        };
        let batch = arrow::compute::concat_batches(&first.schema(), &batches)
            .map_err(|e| Status::invalid_argument(format!("bound parameters: {e}")))?;
        let bound = statement.bind(&batch)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(bound.encode()?),
        })
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let statement = Statement::new(&query.query);
        let plan = self.for_client(&request).plan(&statement).await?;
        let mut params: Vec<(usize, Field)> = plan
            .get_parameter_types()
            .map_err(sql_error)?
            .into_iter()
            .map(|(name, data_type)| {
                let index = name.trim_start_matches('$').parse().unwrap_or(usize::MAX);
                (
                    index,
                    Field::new(name, data_type.unwrap_or(DataType::Null), true),
                )
            })
            .collect();
        params.sort_by_key(|(index, _)| *index);
        let parameter_schema = Schema::new(params.into_iter().map(|(_, f)| f).collect::<Vec<_>>());
        let dataset_schema = if runs_when_planned(&plan) {
            Schema::empty()
        } else {
            plan.schema().as_arrow().clone()
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: statement.encode()?,
            dataset_schema: schema_bytes(&dataset_schema)?,
            parameter_schema: schema_bytes(&parameter_schema)?,
        })
    }

    /// Handles carry everything: there is nothing to free.
    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let session = self.for_client(&request).session;
        let mut builder = query.into_builder();
        for name in session.catalog_names() {
            builder.append(name);
        }
        let schema = builder.schema();
        Ok(stream_batches(schema, vec![builder.build()?]))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let session = self.for_client(&request).session;
        let mut builder = query.into_builder();
        for catalog_name in session.catalog_names() {
            if let Some(catalog) = session.catalog(&catalog_name) {
                for schema_name in catalog.schema_names() {
                    builder.append(&catalog_name, schema_name);
                }
            }
        }
        let schema = builder.schema();
        Ok(stream_batches(schema, vec![builder.build()?]))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let session = self.for_client(&request).session;
        let mut builder = query.into_builder();
        for catalog_name in session.catalog_names() {
            let Some(catalog) = session.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in schema.table_names() {
                    let Some(table) = schema.table(&table_name).await.map_err(sql_error)? else {
                        continue;
                    };
                    builder.append(
                        &catalog_name,
                        &schema_name,
                        &table_name,
                        table_type_name(table.table_type()),
                        &table.schema(),
                    )?;
                }
            }
        }
        let schema = builder.schema();
        Ok(stream_batches(schema, vec![builder.build()?]))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for table_type in [TableType::Base, TableType::View, TableType::Temporary] {
            builder.append(table_type_name(table_type));
        }
        let schema = builder.schema();
        Ok(stream_batches(schema, vec![builder.build()?]))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let builder = query.into_builder(&SQL_INFO);
        let schema = builder.schema();
        Ok(stream_batches(schema, vec![builder.build()?]))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// A schema in the IPC form Flight SQL results carry.
fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e| Status::internal(format!("encoding a schema: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, Int64Array};

    use super::*;

    #[test]
    fn dml_counts_are_summed_and_ddl_changes_none() {
        let batch = RecordBatch::try_from_iter([(
            "count",
            Arc::new(arrow::array::UInt64Array::from(vec![3_u64])) as Arc<dyn Array>,
        )])
        .unwrap();
        assert_eq!(changed_rows(&[batch.clone(), batch]), 6);
        let other = RecordBatch::try_from_iter([(
            "n",
            Arc::new(Int64Array::from(vec![3_i64])) as Arc<dyn Array>,
        )])
        .unwrap();
        assert_eq!(changed_rows(&[other]), 0);
    }
}
