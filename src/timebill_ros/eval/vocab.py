"""Word lists for the synthetic tasks: short, common words (one token each once the
tokenizer has seen them), grouped by kind so list questions have clear answers."""

OBJECTS = """
wrench battery camera ladder bucket helmet lantern blanket hammer bottle basket jacket
rope kettle mirror pillow candle wallet anchor compass violin trumpet guitar drum radio
laptop tablet printer monitor speaker charger cable sensor motor wheel gear spring valve
pump filter engine magnet shovel rake broom mop sponge towel bowl plate spoon fork knife
cup jar box crate bag suitcase backpack umbrella hat scarf glove boot sock shirt coat
key lock chain hook nail screw bolt clamp drill saw chisel brush paint glue tape ribbon
book notebook folder envelope stamp map globe clock watch calendar badge ticket coin
medal trophy statue vase lamp fan heater cooler fridge oven toaster blender mixer
""".split()

PLACES = """
kitchen garage hallway attic cellar office library garden balcony bedroom bathroom
lobby basement workshop studio pantry closet porch shed barn warehouse laboratory
classroom gym cafeteria corridor stairwell elevator rooftop courtyard parking dock
harbor station terminal hangar depot factory clinic pharmacy bakery market museum
theater chapel tower bridge tunnel cabin tent yard field forest meadow canyon island
""".split()

KINDS = {
    "tool": "hammer wrench drill saw chisel shovel rake pliers screwdriver clamp".split(),
    "color": "red blue green yellow orange purple black white gray brown pink silver".split(),
    "animal": "cat dog horse cow sheep goat rabbit mouse fox wolf bear deer owl eagle duck".split(),
    "fruit": "apple banana cherry grape lemon mango lime peach pear plum melon kiwi".split(),
}

# Sentence frames that mention one item of a kind (the list task), and fact frames (QA).
ITEM_FRAMES = [
    "The robot noted a {item} near the door.",
    "Someone mentioned the {item} during the shift.",
    "A {item} was logged by the inspection camera.",
    "The operator asked about the {item} again.",
    "Next to the shelf there was a {item}.",
]
FACT_FRAME = "The {object} is in the {place}."
QUESTION_FRAME = "Where is the {object}?"
