"""Facts of EmoDB (Burkhardt et al., "A database of German emotional speech",
Interspeech 2005), from the corpus documentation.

A file name such as ``03a01Fa.wav`` is: speaker (2 digits), text code (3
characters), emotion letter (German initial), version letter.
"""

# Emotion letter -> label. The order of CLASSES is the model's label order.
EMOTIONS = {
    "W": "anger",  # Wut / Aerger
    "L": "boredom",  # Langeweile
    "E": "disgust",  # Ekel
    "A": "fear",  # Angst
    "F": "happiness",  # Freude
    "T": "sadness",  # Trauer
    "N": "neutral",
}
CLASSES = list(EMOTIONS.values())

# Utterances per class in the released corpus (535 in all).
EXPECTED_COUNTS = {
    "anger": 127,
    "boredom": 81,
    "disgust": 46,
    "fear": 69,
    "happiness": 71,
    "sadness": 62,
    "neutral": 79,
}

# Speaker -> gender. Not in the distributed erklaerung.txt; from the corpus web
# documentation (speaker table with ages), and consistent with the median F0 of
# each speaker's neutral and bored speech (males 101-144 Hz, females 168-198 Hz:
# README.md, with the command).
SPEAKER_GENDER = {
    "03": "male",
    "08": "female",
    "09": "female",
    "10": "male",
    "11": "male",
    "12": "male",
    "13": "female",
    "14": "female",
    "15": "male",
    "16": "female",
}

# Text code -> the German sentence every speaker reads in every emotion, in the
# original documentation's spelling (later republications write "Heute Abend"
# and "hoch getragen").
SENTENCES = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
