using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text.RegularExpressions;
using Target.Cli;

namespace Target.Config;

/// <summary>A volume to create when missing: "NAME:SIZE" or "NAME:SIZE:BLOCK" (BLOCK = 512 or 4096).</summary>
public sealed partial record VolumeSpec(string Name, long SizeBytes, int LogicalBlockSize = VolumeSpec.DefaultLogicalBlockSize)
{
    public const int DefaultLogicalBlockSize = 512;

    /// <summary>Volume sizes are whole 4 KiB chunks.</summary>
    public const long SizeAlignmentBytes = 4096;

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    private static partial Regex NamePattern();

    public static bool IsValidName(string? name) => name is not null && NamePattern().IsMatch(name);

    public static VolumeSpec Parse(string text)
    {
        if (!TryParse(text, out VolumeSpec? spec, out string? error))
            throw new FormatException(error);
        return spec;
    }

    public static bool TryParse(string? text, [NotNullWhen(true)] out VolumeSpec? spec, [NotNullWhen(false)] out string? error)
    {
        spec = null;
        string[] parts = (text ?? "").Split(':');
        if (parts.Length is < 2 or > 3)
        {
            error = $"volume '{text}' must be NAME:SIZE or NAME:SIZE:BLOCK";
            return false;
        }

        if (!SizeParser.TryParse(parts[1], out long sizeBytes, out error))
        {
            error = $"volume '{text}': {error}";
            return false;
        }

        int blockBytes = DefaultLogicalBlockSize;
        if (parts.Length == 3 && !int.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out blockBytes))
        {
            error = $"volume '{text}': bad block size '{parts[2]}'";
            return false;
        }

        return TryCreate(parts[0], sizeBytes, blockBytes, out spec, out error);
    }

    public static bool TryCreate(string? name, long sizeBytes, int logicalBlockSize, [NotNullWhen(true)] out VolumeSpec? spec, [NotNullWhen(false)] out string? error)
    {
        spec = null;
        if (!IsValidName(name))
        {
            error = $"bad volume name '{name}' (1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)";
            return false;
        }
        if (!TryCheckSize(sizeBytes, out error))
        {
            error = $"volume '{name}': {error}";
            return false;
        }
        if (logicalBlockSize is not (512 or 4096))
        {
            error = $"volume '{name}': block size must be 512 or 4096, not {logicalBlockSize}";
            return false;
        }

        spec = new VolumeSpec(name!, sizeBytes, logicalBlockSize);
        error = null;
        return true;
    }

    public static bool TryCheckSize(long sizeBytes, [NotNullWhen(false)] out string? error)
    {
        if (sizeBytes <= 0)
        {
            error = "size must be positive";
            return false;
        }
        if (sizeBytes % SizeAlignmentBytes != 0)
        {
            error = $"size {sizeBytes} is not a multiple of {SizeAlignmentBytes}";
            return false;
        }
        error = null;
        return true;
    }

    public override string ToString() => $"{Name}:{SizeParser.Format(SizeBytes)}:{LogicalBlockSize}";
}
