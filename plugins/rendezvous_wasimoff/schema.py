"""The wasimoff.v1 wire schema (protobuf edition 2023), built at import time from the table below.

The table is the spec's §6 "Wire schema (gen C)": field numbers, types and oneofs are what go
on the wire. Building the descriptor here (instead of committing protoc output) keeps one
readable source of truth and works with whatever protobuf runtime is installed.
"""

from __future__ import annotations

import typing

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

PACKAGE = "wasimoff.v1"
TYPE_URL_PREFIX = "wasimoff/"

F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": F.TYPE_STRING, "bytes": F.TYPE_BYTES, "bool": F.TYPE_BOOL, "uint64": F.TYPE_UINT64,
    "uint32": F.TYPE_UINT32, "int64": F.TYPE_INT64, "int32": F.TYPE_INT32, "float": F.TYPE_FLOAT,
}

# message path -> [(field, number, type, "repeated"|"oneof:<name>"|"")]; enums: path -> [(name, number)]
MESSAGES: dict[str, list[tuple[str, int, str, str]]] = {
    "Envelope": [("sequence", 1, "uint64", ""), ("type", 2, ".wasimoff.v1.Envelope.MessageType", ""),
                 ("error", 3, "string", ""), ("payload", 4, ".google.protobuf.Any", "")],
    "Task": [],
    "Task.Metadata": [("id", 1, "string", ""), ("requester", 2, "string", ""), ("provider", 3, "string", ""),
                      ("reference", 4, "string", ""), ("trace", 5, ".wasimoff.v1.Task.Trace", "")],
    "Task.QoS": [("priority", 1, "bool", ""), ("deadline", 2, ".google.protobuf.Timestamp", ""), ("immediate", 3, "bool", "")],
    "Task.Trace": [("created", 1, "int64", ""), ("duration", 2, "uint64", ""), ("events", 3, ".wasimoff.v1.Task.TraceEvent", "repeated")],
    "Task.TraceEvent": [("unixnano", 1, "int64", ""), ("event", 2, ".wasimoff.v1.Task.TraceEvent.EventType", ""), ("details", 3, "string", "")],
    "Task.Cancel": [("id", 1, "string", ""), ("reason", 2, "string", "")],
    "Task.Wasip1": [],
    "Task.Wasip1.Params": [("binary", 1, ".wasimoff.v1.File", ""), ("args", 2, "string", "repeated"), ("envs", 3, "string", "repeated"),
                           ("stdin", 4, "bytes", ""), ("rootfs", 5, ".wasimoff.v1.File", ""), ("artifacts", 6, "string", "repeated")],
    "Task.Wasip1.Output": [("status", 1, "int32", ""), ("stdout", 2, "bytes", ""), ("stderr", 3, "bytes", ""), ("artifacts", 4, ".wasimoff.v1.File", "")],
    "Task.Wasip1.Request": [("info", 1, ".wasimoff.v1.Task.Metadata", ""), ("qos", 2, ".wasimoff.v1.Task.QoS", ""), ("params", 3, ".wasimoff.v1.Task.Wasip1.Params", "")],
    "Task.Wasip1.Response": [("info", 1, ".wasimoff.v1.Task.Metadata", ""), ("error", 2, "string", "oneof:result"), ("ok", 3, ".wasimoff.v1.Task.Wasip1.Output", "oneof:result")],
    "Task.Pyodide": [],
    "Task.Pyodide.Params": [("packages", 1, "string", "repeated"), ("script", 2, "string", "oneof:run"), ("pickle", 3, "bytes", "oneof:run"),
                            ("envs", 4, "string", "repeated"), ("stdin", 5, "bytes", ""), ("rootfs", 6, ".wasimoff.v1.File", ""), ("artifacts", 7, "string", "repeated")],
    "Task.Pyodide.Output": [("pickle", 1, "bytes", ""), ("stdout", 2, "bytes", ""), ("stderr", 3, "bytes", ""), ("version", 4, "string", ""), ("artifacts", 5, ".wasimoff.v1.File", "")],
    "Task.Pyodide.Request": [("info", 1, ".wasimoff.v1.Task.Metadata", ""), ("qos", 2, ".wasimoff.v1.Task.QoS", ""), ("params", 3, ".wasimoff.v1.Task.Pyodide.Params", "")],
    "Task.Pyodide.Response": [("info", 1, ".wasimoff.v1.Task.Metadata", ""), ("error", 2, "string", "oneof:result"), ("ok", 3, ".wasimoff.v1.Task.Pyodide.Output", "oneof:result")],
    "File": [("ref", 1, "string", ""), ("media", 2, "string", ""), ("blob", 3, "bytes", "")],
    "Filesystem": [],
    "Filesystem.Listing": [],
    "Filesystem.Listing.Request": [],
    "Filesystem.Listing.Response": [("files", 1, "string", "repeated")],
    "Filesystem.Probe": [],
    "Filesystem.Probe.Request": [("file", 1, "string", "")],
    "Filesystem.Probe.Response": [("ok", 1, "bool", "")],
    "Filesystem.Upload": [],
    "Filesystem.Upload.Request": [("upload", 1, ".wasimoff.v1.File", "")],
    "Filesystem.Upload.Response": [("ref", 1, "string", "")],
    "Filesystem.Download": [],
    "Filesystem.Download.Request": [("file", 1, "string", "")],
    "Filesystem.Download.Response": [("download", 1, ".wasimoff.v1.File", ""), ("err", 2, "string", "")],
    "Event": [],
    "Event.GenericMessage": [("message", 1, "string", "")],
    "Event.ProviderResources": [("concurrency", 1, "uint32", ""), ("tasks", 2, "uint32", "")],
    "Event.ClusterInfo": [("providers", 1, "uint32", "")],
    "Event.Throughput": [("overall", 1, "float", ""), ("yours", 2, "float", "")],
    "Event.FileSystemUpdate": [("added", 1, "string", "repeated"), ("removed", 2, "string", "repeated")],
    "Ping": [],
}
ENUMS: dict[str, list[tuple[str, int]]] = {
    "Envelope.MessageType": [("UNKNOWN", 0), ("Request", 1), ("Response", 2), ("Event", 3)],
    "Task.TraceEvent.EventType": [("UNKNOWN", 0), ("ClientError", 10), ("ClientTransmitRequest", 11), ("ClientReceivedResponse", 12),
                                  ("BrokerError", 20), ("BrokerReceivedClientRequest", 21), ("BrokerQueueTask", 22),
                                  ("BrokerScheduleTask", 23), ("BrokerTransmitProviderTask", 24),
                                  ("BrokerReceivedProviderResult", 25), ("BrokerTransmitClientResponse", 26),
                                  ("ProviderError", 30), ("ProviderTaskReceived", 31), ("ProviderGetWorker", 32),
                                  ("ProviderPostToWorker", 33), ("ProviderWorkerPrepare", 34), ("ProviderWorkerExecute", 35),
                                  ("ProviderWorkerDone", 36), ("ProviderTransmitResult", 37), ("ArtDecoSchedulerEnter", 38),
                                  ("ArtDecoSchedulerLeave", 39), ("ArtDecoSchedulerScheduled", 40),
                                  ("ArtDecoSchedulerResultEnter", 41), ("ArtDecoSchedulerResultLeave", 42),
                                  ("ArtDecoWasimoffSerialized", 43), ("ArtDecoWasimoffDeserialized", 44),
                                  ("ArtDecoSchedulerProviderConnect", 45), ("ArtDecoSchedulerProviderOffload", 46),
                                  ("ArtDecoSchedulerRequeue", 47)],
    "Subprotocol": [("UNKNOWN", 0), ("wasimoff_provider_v1_protobuf", 1), ("wasimoff_provider_v1_json", 2)],
}


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="wasimoff/v1/messages.proto", package=PACKAGE, syntax="editions", edition=descriptor_pb2.EDITION_2023,
        dependency=["google/protobuf/any.proto", "google/protobuf/timestamp.proto"],
    )
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for path, fields in MESSAGES.items():
        parent, _, name = path.rpartition(".")
        proto = (protos[parent].nested_type if parent else fdp.message_type).add(name=name)
        protos[path] = proto
        oneofs: dict[str, int] = {}
        for field_name, number, type_name, kind in fields:
            field = proto.field.add(name=field_name, number=number, json_name=_camel(field_name))
            field.label = F.LABEL_REPEATED if kind == "repeated" else F.LABEL_OPTIONAL
            if type_name in _SCALARS:
                field.type = _SCALARS[type_name]
            else:
                is_enum = type_name.rsplit(".", 1)[-1] in ("MessageType", "EventType")
                field.type = F.TYPE_ENUM if is_enum else F.TYPE_MESSAGE
                field.type_name = type_name
            if kind.startswith("oneof:"):
                oneof = kind[6:]
                if oneof not in oneofs:
                    oneofs[oneof] = len(proto.oneof_decl)
                    proto.oneof_decl.add(name=oneof)
                field.oneof_index = oneofs[oneof]
    for path, values in ENUMS.items():
        parent, _, name = path.rpartition(".")
        enum = (protos[parent].enum_type if parent else fdp.enum_type).add(name=name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    return fdp


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


POOL = descriptor_pool.DescriptorPool()
POOL.AddSerializedFile(any_pb2.DESCRIPTOR.serialized_pb)
POOL.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
POOL.AddSerializedFile(_build_file().SerializeToString())


def message_class(path: str) -> type[typing.Any]:  # built at run time: no static fields
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{path}"))


Envelope = message_class("Envelope")
Any = message_factory.GetMessageClass(POOL.FindMessageTypeByName("google.protobuf.Any"))
File = message_class("File")
Ping = message_class("Ping")
Metadata = message_class("Task.Metadata")
Cancel = message_class("Task.Cancel")
Wasip1Params = message_class("Task.Wasip1.Params")
Wasip1Output = message_class("Task.Wasip1.Output")
Wasip1Request = message_class("Task.Wasip1.Request")
Wasip1Response = message_class("Task.Wasip1.Response")
PyodideRequest = message_class("Task.Pyodide.Request")
PyodideResponse = message_class("Task.Pyodide.Response")
ListingRequest = message_class("Filesystem.Listing.Request")
ListingResponse = message_class("Filesystem.Listing.Response")
UploadRequest = message_class("Filesystem.Upload.Request")
UploadResponse = message_class("Filesystem.Upload.Response")
ProbeRequest = message_class("Filesystem.Probe.Request")
ProbeResponse = message_class("Filesystem.Probe.Response")
GenericMessage = message_class("Event.GenericMessage")
ProviderResources = message_class("Event.ProviderResources")
ClusterInfo = message_class("Event.ClusterInfo")
Throughput = message_class("Event.Throughput")
FileSystemUpdate = message_class("Event.FileSystemUpdate")

REQUEST, RESPONSE, EVENT = 1, 2, 3
