// The login phase of one connection (RFC 7143 6.3, 11.12-11.13): a pure state machine that
// takes each Login Request (header fields + text) and returns the Login Response to send.
// It never touches a socket; the connection encodes the reply and, on completion, creates the
// session (TSIH) and switches to the full feature phase.
//
// Invariants:
// - A normal session reaches the full feature phase only for an existing target, an allowed
//   initiator and, where CHAP is configured, after CHAP succeeded.
// - Every reply to a key the initiator offered is a legal value for that key (or Reject /
//   Irrelevant / NotUnderstood); declarative keys we send are sent once.
// - Any failure is final: the reply carries a non-zero status and the connection closes after it.
using System.Buffers.Binary;

namespace Target.Protocol.Iscsi;

/// <summary>The fields of a Login Request header.</summary>
public readonly record struct IscsiLoginRequest(
    bool Transit, bool Continue, IscsiStage CurrentStage, IscsiStage NextStage, byte VersionMax, byte VersionMin,
    ulong Isid, ushort Tsih, uint InitiatorTaskTag, ushort Cid, uint CmdSn, uint ExpStatSn)
{
    public static IscsiLoginRequest FromHeader(in IscsiPduHeader header)
    {
        ReadOnlySpan<byte> h = header.Span;
        return new IscsiLoginRequest(
            (h[1] & IscsiFlags.Transit) != 0,
            (h[1] & IscsiFlags.Continue) != 0,
            (IscsiStage)((h[1] >> 2) & 3),
            (IscsiStage)(h[1] & 3),
            h[2],
            h[3],
            BinaryPrimitives.ReadUInt64BigEndian(h.Slice(8)) >> 16,
            BinaryPrimitives.ReadUInt16BigEndian(h.Slice(14)),
            BinaryPrimitives.ReadUInt32BigEndian(h.Slice(16)),
            BinaryPrimitives.ReadUInt16BigEndian(h.Slice(20)),
            BinaryPrimitives.ReadUInt32BigEndian(h.Slice(24)),
            BinaryPrimitives.ReadUInt32BigEndian(h.Slice(28)));
    }

    public void WriteIsid(Span<byte> destination)
    {
        Span<byte> eight = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(eight, Isid << 16);
        eight.Slice(0, 6).CopyTo(destination);
    }
}

public enum IscsiLoginOutcome
{
    /// <summary>Send the reply and wait for the next Login Request.</summary>
    Continue,
    /// <summary>Send the reply (T=1, NSG=FullFeature) and enter the full feature phase.</summary>
    Complete,
    /// <summary>Send the reply (non-zero status) and close the connection.</summary>
    Failed,
}

public sealed record IscsiLoginReply(IscsiLoginOutcome Outcome, byte StageFlags, ushort Status, byte[] Text)
{
    public bool Transit => (StageFlags & IscsiFlags.Transit) != 0;

    public IscsiStage CurrentStage => (IscsiStage)((StageFlags >> 2) & 3);

    public IscsiStage NextStage => (IscsiStage)(StageFlags & 3);
}

public sealed class IscsiLogin
{
    private readonly IIscsiTargetCatalog _catalog;
    private readonly IscsiServerOptions _options;
    private readonly Func<ushort, bool> _sessionExists;
    private readonly MemoryStream _pendingText = new();

    private int _pdus;
    private bool _started;
    private bool _failed;
    private IscsiStage _stage;
    private bool _authRequired;
    private bool _authDone;
    private IscsiChap? _chap;
    private IscsiChapCredentials? _credentials;
    private bool _sentTpgt;
    private bool _declaredMaxRecv;
    private readonly HashSet<string> _negotiated = new(StringComparer.Ordinal);

    public IscsiLogin(IIscsiTargetCatalog catalog, IscsiServerOptions options, Func<ushort, bool>? sessionExists = null)
    {
        _catalog = catalog;
        _options = options;
        _sessionExists = sessionExists ?? (_ => false);
    }

    public IscsiSessionParameters Parameters { get; } = new();

    /// <summary>The target of a normal session (after the first PDU).</summary>
    public IscsiTarget? Target { get; private set; }

    /// <summary>Fields of the first Login Request (ISID, CID, CmdSN...).</summary>
    public IscsiLoginRequest First { get; private set; }

    /// <summary>A short reason for the log when the login failed.</summary>
    public string? FailureReason { get; private set; }

    public IscsiLoginReply Process(in IscsiLoginRequest request, ReadOnlySpan<byte> data)
    {
        if (_failed) return Fail(IscsiLoginStatus.InitiatorError, "login already failed");
        if (++_pdus > IscsiLimits.LoginPdusMax) return Fail(IscsiLoginStatus.InitiatorError, "too many login PDUs");

        if (!_started)
        {
            _started = true;
            First = request;
            if (request.VersionMin > 0) return Fail(IscsiLoginStatus.UnsupportedVersion, $"version-min {request.VersionMin} is not supported");
            if (request.CurrentStage is not (IscsiStage.Security or IscsiStage.Operational))
                return Fail(IscsiLoginStatus.InitiatorError, $"login starts in stage {(int)request.CurrentStage}");
            if (request.Tsih != 0)
            {
                return _sessionExists(request.Tsih)
                    ? Fail(IscsiLoginStatus.TooManyConnections, "a session allows one connection (MaxConnections=1)")
                    : Fail(IscsiLoginStatus.SessionDoesNotExist, $"no session with TSIH {request.Tsih}");
            }
            _stage = request.CurrentStage;
        }
        else
        {
            if (request.CurrentStage != _stage)
                return Fail(IscsiLoginStatus.InitiatorError, $"CSG {(int)request.CurrentStage} while the login is in stage {(int)_stage}");
            if (request.Isid != First.Isid || request.InitiatorTaskTag != First.InitiatorTaskTag)
                return Fail(IscsiLoginStatus.InitiatorError, "ISID or ITT changed during login");
        }

        if (_pendingText.Length + data.Length > IscsiLimits.LoginTextBytesMax)
            return Fail(IscsiLoginStatus.InitiatorError, "login text too long");
        _pendingText.Write(data);
        if (request.Continue)
        {
            if (request.Transit) return Fail(IscsiLoginStatus.InitiatorError, "C and T both set");
            // More text follows: acknowledge with an empty response in the same stage.
            return new IscsiLoginReply(IscsiLoginOutcome.Continue, StageFlags(false, _stage, 0), IscsiLoginStatus.Success, []);
        }
        byte[] text = _pendingText.ToArray();
        _pendingText.SetLength(0);

        var pairs = new List<KeyValuePair<string, string>>();
        if (!IscsiText.TryParse(text, pairs, out string? textError))
            return Fail(IscsiLoginStatus.InitiatorError, $"bad login text: {textError}");

        var reply = new IscsiTextWriter();
        if (_pdus == 1 || Target is null && Parameters.InitiatorName.Length == 0)
        {
            ushort leading = HandleLeadingKeys(pairs, reply);
            if (leading != IscsiLoginStatus.Success) return Fail(leading, FailureReason ?? "leading keys");
        }

        var chapKeys = new Dictionary<string, string>(StringComparer.Ordinal);
        var operational = new List<KeyValuePair<string, string>>();
        foreach (KeyValuePair<string, string> pair in pairs)
        {
            switch (pair.Key)
            {
                case "InitiatorName":
                case "SessionType":
                case "TargetName":
                case "InitiatorAlias":
                    break;   // leading keys, handled above
                case "AuthMethod":
                    if (_stage != IscsiStage.Security)
                    {
                        reply.Add(pair.Key, IscsiValues.Irrelevant);
                        break;
                    }
                    if (!ChooseAuthMethod(pair.Value, reply)) return Fail(IscsiLoginStatus.AuthenticationFailure, FailureReason!);
                    break;
                default:
                    if (pair.Key.StartsWith("CHAP_", StringComparison.Ordinal))
                    {
                        if (_stage != IscsiStage.Security || _chap is null)
                            return Fail(IscsiLoginStatus.InitiatorError, $"{pair.Key} outside a CHAP exchange");
                        chapKeys[pair.Key] = pair.Value;
                    }
                    else
                    {
                        operational.Add(pair);
                    }
                    break;
            }
        }

        if (_chap is not null && chapKeys.Count > 0)
        {
            _chap.Process(chapKeys, reply);
            if (_chap.Failed) return Fail(IscsiLoginStatus.AuthenticationFailure, _chap.FailureReason!);
            if (_chap.Succeeded) _authDone = true;
        }

        NegotiateOperational(operational, reply);

        // Stage transition.
        if (_stage == IscsiStage.Operational && _authRequired && !_authDone)
            return Fail(IscsiLoginStatus.AuthenticationFailure, "authentication is required but the initiator skipped the security stage");

        bool transit = false;
        IscsiStage next = 0;
        if (request.Transit)
        {
            if (request.NextStage is not (IscsiStage.Operational or IscsiStage.FullFeature) || request.NextStage <= _stage)
                return Fail(IscsiLoginStatus.InitiatorError, $"bad NSG {(int)request.NextStage} from stage {(int)_stage}");
            bool stageDone = _stage != IscsiStage.Security || SecurityDone();
            if (stageDone)
            {
                transit = true;
                next = request.NextStage;
            }
        }

        IscsiStage current = _stage;
        if (transit && next == IscsiStage.FullFeature)
        {
            if (_authRequired && !_authDone)
                return Fail(IscsiLoginStatus.AuthenticationFailure, "authentication did not complete");
            DeclareMaxRecv(reply);
        }
        else if (_stage == IscsiStage.Operational)
        {
            DeclareMaxRecv(reply);
        }

        byte flags = StageFlags(transit, current, next);
        if (transit) _stage = next;
        IscsiLoginOutcome outcome = transit && next == IscsiStage.FullFeature ? IscsiLoginOutcome.Complete : IscsiLoginOutcome.Continue;
        return new IscsiLoginReply(outcome, flags, IscsiLoginStatus.Success, reply.ToArray());
    }

    private static byte StageFlags(bool transit, IscsiStage current, IscsiStage next)
        => (byte)((transit ? IscsiFlags.Transit : 0) | ((int)current << 2) | (transit ? (int)next : 0));

    private IscsiLoginReply Fail(ushort status, string reason)
    {
        _failed = true;
        FailureReason = reason;
        return new IscsiLoginReply(IscsiLoginOutcome.Failed, StageFlags(false, _stage, 0), status, []);
    }

    private bool SecurityDone()
    {
        if (_chap is not null) return _chap.Succeeded;
        return !_authRequired;
    }

    private void DeclareMaxRecv(IscsiTextWriter reply)
    {
        if (_declaredMaxRecv) return;
        _declaredMaxRecv = true;
        Parameters.TargetMaxRecvDataSegmentBytes = IscsiLimits.TargetMaxRecvDataSegmentBytes;
        reply.Add("MaxRecvDataSegmentLength", IscsiValues.Format(IscsiLimits.TargetMaxRecvDataSegmentBytes));
    }

    /// <summary>InitiatorName, SessionType, TargetName (first PDU): finds the target and decides whether CHAP is required.</summary>
    private ushort HandleLeadingKeys(List<KeyValuePair<string, string>> pairs, IscsiTextWriter reply)
    {
        string? initiatorName = null;
        string? sessionType = null;
        string? targetName = null;
        foreach (KeyValuePair<string, string> pair in pairs)
        {
            switch (pair.Key)
            {
                case "InitiatorName": initiatorName = pair.Value; break;
                case "SessionType": sessionType = pair.Value; break;
                case "TargetName": targetName = pair.Value; break;
                case "InitiatorAlias": Parameters.InitiatorAlias = pair.Value; break;
            }
        }
        if (initiatorName is null)
        {
            FailureReason = "InitiatorName missing";
            return IscsiLoginStatus.MissingParameter;
        }
        if (!IscsiNames.IsValidName(initiatorName))
        {
            FailureReason = $"bad InitiatorName '{initiatorName}'";
            return IscsiLoginStatus.InitiatorError;
        }
        Parameters.InitiatorName = initiatorName;
        switch (sessionType ?? "Normal")
        {
            case "Normal":
                Parameters.SessionType = IscsiSessionType.Normal;
                break;
            case "Discovery":
                Parameters.SessionType = IscsiSessionType.Discovery;
                break;
            default:
                FailureReason = $"SessionType={sessionType}";
                return IscsiLoginStatus.SessionTypeNotSupported;
        }

        if (Parameters.SessionType == IscsiSessionType.Discovery)
        {
            _credentials = _options.DiscoveryChap;
        }
        else
        {
            if (targetName is null)
            {
                FailureReason = "TargetName missing in a normal session";
                return IscsiLoginStatus.MissingParameter;
            }
            if (!_catalog.TryGetTarget(targetName, out IscsiTarget? target))
            {
                FailureReason = $"no target '{targetName}'";
                return IscsiLoginStatus.NotFound;
            }
            if (!_options.IsInitiatorAllowed(target.Name, initiatorName))
            {
                FailureReason = $"initiator '{initiatorName}' is not allowed on '{target.Name}'";
                return IscsiLoginStatus.AuthorizationFailure;
            }
            Target = target;
            Parameters.TargetName = target.Name;
            _credentials = _options.ChapFor(target.Name);
            if (!_sentTpgt)
            {
                _sentTpgt = true;
                reply.Add("TargetPortalGroupTag", IscsiValues.Format(IscsiLimits.TargetPortalGroupTag));
            }
        }
        _authRequired = _credentials is not null;
        return IscsiLoginStatus.Success;
    }

    private bool ChooseAuthMethod(string offered, IscsiTextWriter reply)
    {
        if (_negotiated.Contains("AuthMethod"))
        {
            reply.Add("AuthMethod", IscsiValues.Reject);
            FailureReason = "AuthMethod negotiated twice";
            return false;
        }
        _negotiated.Add("AuthMethod");
        string[] methods = offered.Split(',');
        if (_authRequired)
        {
            if (!methods.Contains("CHAP"))
            {
                reply.Add("AuthMethod", IscsiValues.Reject);
                FailureReason = $"CHAP is required; initiator offered AuthMethod={offered}";
                return false;
            }
            reply.Add("AuthMethod", "CHAP");
            _chap = new IscsiChap(_credentials!);
            return true;
        }
        if (methods.Contains(IscsiValues.None))
        {
            reply.Add("AuthMethod", IscsiValues.None);
            _authDone = true;
            return true;
        }
        reply.Add("AuthMethod", IscsiValues.Reject);
        FailureReason = $"no CHAP secret is configured for this target; initiator offered AuthMethod={offered}";
        return false;
    }

    /// <summary>Operational keys (RFC 7143 13): answers in the order offered.</summary>
    private void NegotiateOperational(List<KeyValuePair<string, string>> pairs, IscsiTextWriter replyText)
    {
        IscsiSessionParameters p = Parameters;
        bool discovery = p.SessionType == IscsiSessionType.Discovery;
        // Answers in offer order; FirstBurstLength's value is filled in once MaxBurstLength is known.
        var reply = new Answers();
        int firstBurstAnswer = -1;
        foreach (KeyValuePair<string, string> pair in pairs)
        {
            string key = pair.Key;
            string value = pair.Value;
            switch (key)
            {
                case "HeaderDigest":
                case "DataDigest":
                    {
                        string? chosen = IscsiValues.FirstAcceptable(value, v => v is IscsiValues.None or IscsiValues.Crc32C);
                        if (chosen is null)
                        {
                            reply.Add(key, IscsiValues.Reject);
                            break;
                        }
                        if (key == "HeaderDigest") p.HeaderDigest = chosen == IscsiValues.Crc32C;
                        else p.DataDigest = chosen == IscsiValues.Crc32C;
                        reply.Add(key, chosen);
                        break;
                    }
                case "MaxRecvDataSegmentLength":
                    if (IscsiValues.TryParseNumber(value, IscsiLimits.MaxRecvDataSegmentBytesMin, IscsiLimits.MaxRecvDataSegmentBytesMax, out long mrdsl))
                        p.InitiatorMaxRecvDataSegmentBytes = (int)mrdsl;
                    else
                        reply.Add(key, IscsiValues.Reject);
                    break;
                case "MaxConnections":
                    if (discovery) reply.Add(key, IscsiValues.Irrelevant);
                    else NumericMin(reply, key, value, 1, 65535, 1, v => p.MaxConnections = v);
                    break;
                case "MaxBurstLength":
                    if (discovery) reply.Add(key, IscsiValues.Irrelevant);
                    else NumericMin(reply, key, value, 512, IscsiLimits.MaxRecvDataSegmentBytesMax, IscsiLimits.MaxBurstBytes, v => p.MaxBurstBytes = v);
                    break;
                case "FirstBurstLength":
                    if (discovery)
                    {
                        reply.Add(key, IscsiValues.Irrelevant);
                    }
                    else if (IscsiValues.TryParseNumber(value, 512, IscsiLimits.MaxRecvDataSegmentBytesMax, out long firstBurst))
                    {
                        p.FirstBurstBytes = (int)Math.Min(firstBurst, IscsiLimits.FirstBurstBytes);
                        firstBurstAnswer = reply.Count;
                        reply.Add(key, "");
                    }
                    else
                    {
                        reply.Add(key, IscsiValues.Reject);
                    }
                    break;
                case "InitialR2T":
                    if (discovery) reply.Add(key, IscsiValues.Irrelevant);
                    else BooleanResult(reply, key, value, or: true, ours: false, v => p.InitialR2T = v);
                    break;
                case "ImmediateData":
                    if (discovery) reply.Add(key, IscsiValues.Irrelevant);
                    else BooleanResult(reply, key, value, or: false, ours: true, v => p.ImmediateData = v);
                    break;
                case "MaxOutstandingR2T":
                    if (discovery) reply.Add(key, IscsiValues.Irrelevant);
                    else NumericMin(reply, key, value, 1, 65535, IscsiLimits.MaxOutstandingR2T, v => p.MaxOutstandingR2T = v);
                    break;
                case "DataPDUInOrder":
                    if (discovery) reply.Add(key, IscsiValues.Irrelevant);
                    else BooleanResult(reply, key, value, or: true, ours: true, v => p.DataPduInOrder = v);
                    break;
                case "DataSequenceInOrder":
                    if (discovery) reply.Add(key, IscsiValues.Irrelevant);
                    else BooleanResult(reply, key, value, or: true, ours: true, v => p.DataSequenceInOrder = v);
                    break;
                case "DefaultTime2Wait":
                    if (IscsiValues.TryParseNumber(value, 0, 3600, out long wait))
                    {
                        p.DefaultTime2Wait = (int)Math.Max(wait, IscsiLimits.DefaultTime2Wait);
                        reply.Add(key, IscsiValues.Format(p.DefaultTime2Wait));
                    }
                    else
                    {
                        reply.Add(key, IscsiValues.Reject);
                    }
                    break;
                case "DefaultTime2Retain":
                    NumericMin(reply, key, value, 0, 3600, 0, v => p.DefaultTime2Retain = v);
                    break;
                case "ErrorRecoveryLevel":
                    NumericMin(reply, key, value, 0, 2, 0, v => p.ErrorRecoveryLevel = v);
                    break;
                case "IFMarker":
                case "OFMarker":
                    // RFC 3720 markers (removed in RFC 7143): AND with our "No".
                    if (IscsiValues.TryParseBool(value, out _)) reply.Add(key, IscsiValues.No);
                    else reply.Add(key, IscsiValues.Reject);
                    break;
                case "IFMarkInt":
                case "OFMarkInt":
                    reply.Add(key, IscsiValues.Irrelevant);
                    break;
                case "iSCSIProtocolLevel":
                    NumericMin(reply, key, value, 0, 31, 1, _ => { });
                    break;
                case "TaskReporting":
                    reply.Add(key, value.Split(',').Contains("RFC3720") ? "RFC3720" : IscsiValues.Reject);
                    break;
                case "SendTargets":
                case "TargetAddress":
                case "TargetAlias":
                case "TargetPortalGroupTag":
                    // Target-declared or full-feature-only keys have no business in a login request.
                    reply.Add(key, IscsiValues.Irrelevant);
                    break;
                default:
                    reply.Add(key, IscsiValues.NotUnderstood);
                    break;
            }
        }

        // FirstBurstLength must not exceed MaxBurstLength.
        p.FirstBurstBytes = Math.Min(p.FirstBurstBytes, p.MaxBurstBytes);
        if (firstBurstAnswer >= 0) reply.Set(firstBurstAnswer, IscsiValues.Format(p.FirstBurstBytes));
        foreach ((string key, string value) in reply.Items) replyText.Add(key, value);
    }

    private sealed class Answers
    {
        public readonly List<(string Key, string Value)> Items = new();

        public int Count => Items.Count;

        public void Add(string key, string value) => Items.Add((key, value));

        public void Set(int index, string value) => Items[index] = (Items[index].Key, value);
    }

    private static void NumericMin(Answers reply, string key, string value, long min, long max, long ours, Action<int> set)
    {
        if (!IscsiValues.TryParseNumber(value, min, max, out long offered))
        {
            reply.Add(key, IscsiValues.Reject);
            return;
        }
        int result = (int)Math.Min(offered, ours);
        set(result);
        reply.Add(key, IscsiValues.Format(result));
    }

    private static void BooleanResult(Answers reply, string key, string value, bool or, bool ours, Action<bool> set)
    {
        if (!IscsiValues.TryParseBool(value, out bool offered))
        {
            reply.Add(key, IscsiValues.Reject);
            return;
        }
        bool result = or ? offered || ours : offered && ours;
        set(result);
        reply.Add(key, IscsiValues.Format(result));
    }
}
