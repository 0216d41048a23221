using System.Diagnostics.CodeAnalysis;
using System.Globalization;

namespace Target.Cli;

/// <summary>
/// Sizes as people type them: "4096", "512K", "10G", "1T", "4GiB", "64mb". Suffixes are powers
/// of 1024 (K, M, G, T, P); a trailing "B" or "iB" is accepted. Whole numbers only, no overflow.
/// </summary>
public static class SizeParser
{
    private const long Kib = 1024;

    public static long Parse(string text)
    {
        if (!TryParse(text, out long bytes, out string? error))
            throw new FormatException(error);
        return bytes;
    }

    public static bool TryParse(string? text, out long bytes) => TryParse(text, out bytes, out _);

    public static bool TryParse(string? text, out long bytes, [NotNullWhen(false)] out string? error)
    {
        bytes = 0;
        if (string.IsNullOrWhiteSpace(text))
        {
            error = "empty size";
            return false;
        }

        ReadOnlySpan<char> s = text.AsSpan().Trim();
        int digits = 0;
        while (digits < s.Length && char.IsAsciiDigit(s[digits]))
            digits++;
        if (digits == 0)
        {
            error = $"size '{text}' does not start with a number";
            return false;
        }

        if (!long.TryParse(s[..digits], NumberStyles.None, CultureInfo.InvariantCulture, out long number))
        {
            error = $"size '{text}' is too large";
            return false;
        }

        ReadOnlySpan<char> suffix = s[digits..].Trim();
        if (!TryMultiplier(suffix, out long multiplier))
        {
            error = $"size '{text}' has an unknown suffix '{suffix.ToString()}' (use K, M, G, T or P, powers of 1024)";
            return false;
        }

        try
        {
            bytes = checked(number * multiplier);
        }
        catch (OverflowException)
        {
            error = $"size '{text}' is too large";
            return false;
        }

        error = null;
        return true;
    }

    private static bool TryMultiplier(ReadOnlySpan<char> suffix, out long multiplier)
    {
        multiplier = 1;
        if (suffix.IsEmpty)
            return true;

        char unit = char.ToUpperInvariant(suffix[0]);
        ReadOnlySpan<char> rest = suffix[1..];
        if (unit == 'B')
            return rest.IsEmpty;

        multiplier = unit switch
        {
            'K' => Kib,
            'M' => Kib * Kib,
            'G' => Kib * Kib * Kib,
            'T' => Kib * Kib * Kib * Kib,
            'P' => Kib * Kib * Kib * Kib * Kib,
            _ => 0,
        };
        if (multiplier == 0)
            return false;

        return rest.IsEmpty
            || rest.Equals("B", StringComparison.OrdinalIgnoreCase)
            || rest.Equals("iB", StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>The shortest exact form: 10737418240 -> "10G", 1536 -> "1536", 0 -> "0".</summary>
    public static string Format(long bytes)
    {
        ReadOnlySpan<char> units = "KMGTP";
        string suffix = "";
        long value = bytes;
        for (int i = 0; i < units.Length && value != 0 && value % Kib == 0; i++)
        {
            value /= Kib;
            suffix = units[i].ToString();
        }
        return value.ToString(CultureInfo.InvariantCulture) + suffix;
    }

    /// <summary>Human form with one decimal: "4.0 GiB", "512 B".</summary>
    public static string Human(double bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        int unit = 0;
        while (Math.Abs(bytes) >= 1024 && unit < units.Length - 1)
        {
            bytes /= 1024;
            unit++;
        }
        return unit == 0
            ? string.Create(CultureInfo.InvariantCulture, $"{bytes:0} {units[unit]}")
            : string.Create(CultureInfo.InvariantCulture, $"{bytes:0.0} {units[unit]}");
    }
}
